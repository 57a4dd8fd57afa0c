package main

import (
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"

	"github.com/sipmesh/sipmesh/internal/leakcheck"
)

// TestWebPassword: `sipmesh web-password` sets the password the node's web
// UI accepts, through the control socket.
func TestWebPassword(t *testing.T) {
	leakcheck.Check(t)
	sock, node := startNode(t, "n1", "")
	srv := httptest.NewServer(node.WebHandler())
	defer srv.Close()
	c := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	login := func(pw string) bool {
		resp, err := c.PostForm(srv.URL+"/login", url.Values{"password": {pw}})
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return len(resp.Cookies()) == 1
	}
	if login("") {
		t.Fatal("log-in before any password was set")
	}
	withStdin(t, "short\n")
	if code, _, stderr := run(t, "web-password", "--control", sock); code == 0 || !strings.Contains(stderr, "characters") {
		t.Errorf("short password: exit %d, %s", code, stderr)
	}
	withStdin(t, "the operator's password\n")
	if code, stdout, stderr := run(t, "web-password", "--control", sock); code != 0 || !strings.Contains(stdout, "password set") {
		t.Fatalf("web-password: exit %d\n%s%s", code, stdout, stderr)
	}
	if login("wrong password") || !login("the operator's password") {
		t.Error("the web UI does not take the password set with web-password")
	}
}
