package main

import (
	"context"
	"io"
	"log/slog"

	"github.com/sipmesh/sipmesh/gateway"
	"github.com/sipmesh/sipmesh/netx"
	"github.com/sipmesh/sipmesh/webui"
)

func init() {
	register(command{name: "node", summary: "run a mesh node on this machine's interfaces", run: runNode})
}

func runNode(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("node", "--config FILE", `Node runs the sipmesh daemon on this machine: SSR on the mesh interfaces
named in the config file, and the local control socket that 'sipmesh status'
and 'sipmesh ping' use. The node key is created in the state directory on
first start and kept. The config file has one "key value" per line, "#"
starting a comment; only mesh-interface is required:

  name node1
  mesh-interface wlan0
  lan-interface eth0

Keys:

`+gateway.ConfigKeysText()+`
It runs until SIGINT or SIGTERM, then shuts down cleanly.`, stderr)
	config := fs.String("config", "", "config `FILE` (required)")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() != 0 {
		return usageErrorf("unexpected arguments %q", fs.Args())
	}
	if *config == "" {
		return usageErrorf("--config FILE is required")
	}
	opts, err := gateway.LoadConfig(*config)
	if err != nil {
		return err
	}
	// Logs go to stderr, where systemd and the test harness collect them.
	// The web UI's node page shows the last lines logged.
	opts.LogTail = webui.NewLogBuffer(200)
	opts.Version = versionString()
	log := slog.New(opts.LogTail.Handler(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: opts.LogLevel}), opts.LogLevel))
	node, err := gateway.NewNode(opts, netx.Kernel{}, log)
	if err != nil {
		return err
	}
	return node.Run(ctx)
}
