package main

import (
	"context"
	"fmt"
	"io"
	"strings"

	"github.com/sipmesh/sipmesh/gateway"
)

func init() {
	register(command{name: "gateways", summary: "list the mesh's live Internet gateways, best first", run: runGateways})
}

func runGateways(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	return runList(ctx, args, stdout, stderr, "gateways",
		`Gateways lists the live Internet gateways the node knows from their
announcements in the DHT, best first: what each offers (uris: calls to
Internet SIP URIs; trunk: numbers by dial prefix; inbound: calls for its
sip-domain), its uplink as it measures it (RTT and loss to its STUN server),
the mesh path from this node (RTT, hops, loss of the node's pings) and the
E-model rating R (MOS) of the whole path, by which calls choose a gateway.
A gateway that stops announcing is gone within 10 seconds.`,
		"NAME\tID\tADDR\tOFFERS\tUPLINK\tUPLINK RTT\tUPLINK LOSS\tMESH RTT\tHOPS\tMESH LOSS\tR\tMOS\t",
		func(ctx context.Context, c *gateway.ControlClient) (any, [][]string, error) {
			gws, err := c.Gateways(ctx)
			var rows [][]string
			for _, g := range gws {
				up := "down"
				if g.Up {
					up = "up"
				}
				meshRTT := "-"
				if g.MeshProbes > 0 {
					meshRTT = fmt.Sprintf("%.1fms", g.MeshRTTMs)
				}
				mark := ""
				switch {
				case g.Best:
					mark = "best"
				case !g.Usable:
					mark = "unusable"
				}
				rows = append(rows, []string{g.Name, g.ID, g.Addr, strings.Join(g.Offers, ","), up,
					fmt.Sprintf("%.1fms", g.UplinkRTTMs), fmt.Sprintf("%.1f%%", g.UplinkLossPct),
					meshRTT, fmt.Sprint(g.MeshHops), fmt.Sprintf("%.0f%%", g.MeshLossPct),
					fmt.Sprintf("%.1f", g.R), fmt.Sprintf("%.2f", g.MOS), mark})
			}
			return gws, rows, err
		})
}
