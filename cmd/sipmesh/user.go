package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"golang.org/x/sys/unix"

	"github.com/sipmesh/sipmesh/gateway"
	"github.com/sipmesh/sipmesh/registrar"
)

func init() {
	register(command{name: "user", summary: "add, remove or list subscribers (user add|del|list)", run: runUser,
		subcommands: []string{"add", "del", "list"}})
}

// stdin is where `user add` reads the password; tests replace it.
var stdin io.Reader = os.Stdin

const userDoc = `User manages the subscribers of the mesh through the running node's control
socket: "user add EXT" creates or changes an account (extension EXT, i.e.
sip:EXT@mesh, with a password and optional display name), "user del EXT"
removes it, "user list" shows them.

The password is read from standard input (one line; not echoed on a
terminal). This command computes the digest HA1 values (MD5 and SHA-256,
realm "mesh") and sends only those: the password never reaches the node
or the mesh. The node signs the record with the mesh administrator key
(config "admin-key"); a node without that key refuses changes.`

func runUser(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	return runAddDelList(ctx, "user", "add|del|list [flags] [EXT]", userDoc, args, stdout, stderr, runUserAdd, runUserDel, runUserList)
}

func runUserAdd(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("user add", "[flags] EXT", "Add creates the subscriber EXT, or changes its password and display name.\nThe password is read from standard input.", stderr)
	control := fs.String("control", gateway.DefaultControl, "control `SOCKET` of the node")
	display := fs.String("display", "", "display `NAME` shown to called parties")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		return usageErrorf("want exactly one EXT, got %d arguments", fs.NArg())
	}
	ext := fs.Arg(0)
	if err := registrar.ValidExt(ext); err != nil {
		return usageErrorf("%v", err)
	}
	// Ask for the password only once a node listens: typing it for nothing
	// is the worst way to learn that the node is down.
	if err := checkControl(*control); err != nil {
		return fmt.Errorf("user add %s: %w", ext, err)
	}
	pw, err := readPassword(stderr, ext)
	if err != nil {
		return err
	}
	a, err := registrar.NewAccount(ext, pw, *display)
	if err != nil {
		return err
	}
	c := gateway.NewControlClient(*control)
	defer c.Close()
	info, err := c.AddUser(ctx, a)
	if err != nil {
		return fmt.Errorf("user add %s: %w", ext, err)
	}
	fmt.Fprintf(stdout, "stored subscriber %s (sip:%s@mesh)\n", info.Ext, info.Ext)
	return nil
}

// checkControl reports whether a node listens on the control socket at
// path. It only connects: the client never creates files or directories.
func checkControl(path string) error {
	c, err := net.DialTimeout("unix", path, 2*time.Second)
	if err != nil {
		return fmt.Errorf("control socket %s: %w: %v", path, gateway.ErrNoNode, err)
	}
	return c.Close()
}

// readPassword reads one line from stdin, with terminal echo off when
// stdin is a terminal.
func readPassword(stderr io.Writer, ext string) (string, error) {
	if f, ok := stdin.(*os.File); ok {
		fd := int(f.Fd())
		if old, err := unix.IoctlGetTermios(fd, unix.TCGETS); err == nil {
			fmt.Fprintf(stderr, "Password for %s: ", ext)
			noEcho := *old
			noEcho.Lflag &^= unix.ECHO
			unix.IoctlSetTermios(fd, unix.TCSETS, &noEcho)
			defer func() {
				unix.IoctlSetTermios(fd, unix.TCSETS, old)
				fmt.Fprintln(stderr)
			}()
		}
	}
	line, err := bufio.NewReader(stdin).ReadString('\n')
	if err != nil && !(errors.Is(err, io.EOF) && line != "") {
		return "", fmt.Errorf("reading the password from standard input: %w", err)
	}
	pw := strings.TrimRight(line, "\r\n")
	if pw == "" {
		return "", errors.New("empty password")
	}
	return pw, nil
}

func runUserDel(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("user del", "[flags] EXT", "Del removes the subscriber EXT.", stderr)
	control := fs.String("control", gateway.DefaultControl, "control `SOCKET` of the node")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		return usageErrorf("want exactly one EXT, got %d arguments", fs.NArg())
	}
	c := gateway.NewControlClient(*control)
	defer c.Close()
	info, err := c.DeleteUser(ctx, fs.Arg(0))
	if err != nil {
		return fmt.Errorf("user del %s: %w", fs.Arg(0), err)
	}
	fmt.Fprintf(stdout, "removed subscriber %s\n", info.Ext)
	return nil
}

func runUserList(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	return runList(ctx, args, stdout, stderr, "user list", "List shows the subscribers: extension, display name, last change.",
		"EXT\tDISPLAY\tUPDATED", func(ctx context.Context, c *gateway.ControlClient) (any, [][]string, error) {
			users, err := c.Users(ctx)
			var rows [][]string
			for _, u := range users {
				rows = append(rows, []string{u.Ext, u.Display, u.Updated.Format("2006-01-02 15:04:05Z")})
			}
			return users, rows, err
		})
}

// runList is a "… list" command: it asks the node's control socket with
// fetch and prints the answer as a table under header, or as JSON.
func runList(ctx context.Context, args []string, stdout, stderr io.Writer, name, doc, header string,
	fetch func(context.Context, *gateway.ControlClient) (any, [][]string, error)) error {
	fs := newFlagSet(name, "[flags]", doc, stderr)
	control := fs.String("control", gateway.DefaultControl, "control `SOCKET` of the node")
	asJSON := fs.Bool("json", false, "print JSON")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() != 0 {
		return usageErrorf("unexpected arguments %q", fs.Args())
	}
	c := gateway.NewControlClient(*control)
	defer c.Close()
	v, rows, err := fetch(ctx, c)
	if err != nil {
		return err
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(v)
	}
	tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, header)
	for _, r := range rows {
		fmt.Fprintln(tw, strings.Join(r, "\t"))
	}
	return tw.Flush()
}
