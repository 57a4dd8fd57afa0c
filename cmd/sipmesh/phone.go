package main

import (
	"context"
	"fmt"
	"io"

	"github.com/sipmesh/sipmesh/gateway"
)

func init() {
	register(command{name: "phone", summary: "bind desk phones (by MAC) to extensions for auto-provisioning (phone add|del|list)", run: runPhone,
		subcommands: []string{"add", "del", "list"}})
}

const phoneDoc = `Phone binds desk phones to extensions on the node they are plugged into,
so that they provision themselves: DHCP option 66 points a phone at the
node's web listener (http://LAN-ADDRESS:web-port/provision/), where it
fetches its file by MAC (Yealink MAC.cfg, Grandstream cfgMAC.xml, Polycom
MAC.cfg and MAC-phone.cfg) with a working account. A file is handed only to
the address that holds that MAC's DHCP lease on this node's LAN.

"phone add MAC EXT" on a node with the mesh administrator key makes a
random SIP password for EXT (creating the subscriber if needed, otherwise
replacing its password) unless --password-stdin gives one. On a node
without that key, give the subscriber's password with --password-stdin:
the node checks it against the account. The clear password stays in this
node's state directory (phones.json, mode 0600); the mesh only ever holds
digest hashes. A phone moved to another node is added again there.`

func runPhone(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	return runAddDelList(ctx, "phone", "add|del|list [flags] [MAC [EXT]]", phoneDoc, args, stdout, stderr, runPhoneAdd, runPhoneDel, runPhoneList)
}

func runPhoneAdd(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("phone add", "[flags] MAC EXT", "Add binds the phone with MAC to extension EXT on this node.", stderr)
	control := fs.String("control", gateway.DefaultControl, "control `SOCKET` of the node")
	withPassword := fs.Bool("password-stdin", false, "read the SIP password from standard input instead of generating one")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() != 2 {
		return usageErrorf("want MAC and EXT, got %d arguments", fs.NArg())
	}
	req := gateway.AddPhoneRequest{MAC: fs.Arg(0), Ext: fs.Arg(1)}
	if err := checkControl(*control); err != nil {
		return fmt.Errorf("phone add %s: %w", req.MAC, err)
	}
	if *withPassword {
		pw, err := readPassword(stderr, req.Ext)
		if err != nil {
			return err
		}
		req.Password = pw
	}
	c := gateway.NewControlClient(*control)
	defer c.Close()
	info, err := c.AddPhone(ctx, req)
	if err != nil {
		return fmt.Errorf("phone add %s: %w", req.MAC, err)
	}
	fmt.Fprintf(stdout, "phone %s gets extension %s (sip:%s@mesh) from this node\n", info.MAC, info.Ext, info.Ext)
	if info.PasswordChanged {
		fmt.Fprintf(stdout, "the password of %s changed: phones of %s bound on other nodes must be added again there\n", info.Ext, info.Ext)
	}
	return nil
}

func runPhoneDel(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("phone del", "[flags] MAC", "Del forgets the phone's binding and password on this node (the subscriber stays).", stderr)
	control := fs.String("control", gateway.DefaultControl, "control `SOCKET` of the node")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		return usageErrorf("want exactly one MAC, got %d arguments", fs.NArg())
	}
	c := gateway.NewControlClient(*control)
	defer c.Close()
	info, err := c.DeletePhone(ctx, fs.Arg(0))
	if err != nil {
		return fmt.Errorf("phone del %s: %w", fs.Arg(0), err)
	}
	fmt.Fprintf(stdout, "removed phone %s (extension %s)\n", info.MAC, info.Ext)
	return nil
}

func runPhoneList(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	return runList(ctx, args, stdout, stderr, "phone list", "List shows the phones bound on this node: MAC, extension, when.",
		"MAC\tEXT\tADDED", func(ctx context.Context, c *gateway.ControlClient) (any, [][]string, error) {
			phones, err := c.Phones(ctx)
			var rows [][]string
			for _, p := range phones {
				rows = append(rows, []string{p.MAC, p.Ext, p.Added.Format("2006-01-02 15:04:05Z")})
			}
			return phones, rows, err
		})
}
