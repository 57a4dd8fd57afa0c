//go:build router

package main

import (
	"context"
	"fmt"
	"io"
)

// The router build (make cross: mipsle, arm, arm64; the .ipk packages)
// leaves out the developer tools demo and sim. They run whole meshes in
// memory — sim needs gigabytes at 10,000 nodes — which no router has,
// and they cost 0.8 MB of the 12 MB flash budget (measured on mipsle when
// this was written: 12.52 MB with them, 11.73 MB without). A user who types them on a
// router gets this clear error instead of "unknown command".
func init() {
	for _, name := range []string{"demo", "sim"} {
		register(command{name: name, summary: "not in the router build (developer tool; build for a PC)", run: notInRouterBuild(name)})
	}
}

// notInRouterBuild is the usage error of a developer tool on a router.
func notInRouterBuild(name string) func(context.Context, []string, io.Writer, io.Writer) error {
	return func(context.Context, []string, io.Writer, io.Writer) error {
		return fmt.Errorf("%s is a developer tool that the router build leaves out (it runs a whole mesh in memory); run it from a PC build: make build, then bin/sipmesh %s", name, name)
	}
}
