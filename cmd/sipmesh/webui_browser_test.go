//go:build !router

package main

import (
	"context"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/sipmesh/sipmesh/gateway"
	"github.com/sipmesh/sipmesh/phones"
	"github.com/sipmesh/sipmesh/webui"
)

// TestWebUIBrowser drives two nodes' web UIs in headless Chromium: log in
// on the node that holds the administrator key, add a subscriber, see it
// on another node's UI, see a live call between simulated phones with its
// mesh path and MOS, log out. Screenshots of every page, wide and
// phone-sized, go to $SIPMESH_SCREENSHOTS or a temporary directory.
func TestWebUIBrowser(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a mesh and a browser")
	}
	browser := ""
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			browser = p
			break
		}
	}
	if browser == "" {
		t.Fatal("chromium not found: install the Debian package chromium (scripts/test-deps.sh)")
	}
	shots := os.Getenv("SIPMESH_SCREENSHOTS")
	if shots == "" {
		shots = t.TempDir()
	} else if err := os.MkdirAll(shots, 0o755); err != nil {
		t.Fatal(err)
	}

	m := startMesh(t, meshConfig{Nodes: 3, Seed: 7, MinDiameter: 2})
	defer stopMesh(t, m)
	addPhones(t, m, 1, phones.Policy{Mode: phones.AutoAnswer})
	const pw = "web admin password"
	if err := webui.SetPassword(filepath.Join(m.dir, nodeName(0), gateway.WebPasswordFile), pw); err != nil {
		t.Fatal(err)
	}
	// The browser reaches the UIs over loopback; the nodes serve the same
	// handler on their LAN addresses.
	ui := make([]*httptest.Server, 2)
	for i := range ui {
		ui[i] = httptest.NewServer(m.nodes[i*2].WebHandler())
		defer ui[i].Close()
	}

	// A call from the phone on n1 to the phone on n3, two hops away,
	// held until the browser has seen it.
	release := make(chan struct{})
	answered := make(chan struct{})
	callDone := make(chan callResult, 1)
	var a, b *meshPhone
	for _, p := range m.phones {
		switch p.Node {
		case 0:
			a = p
		case 2:
			b = p
		}
	}
	go func() { callDone <- m.call(context.Background(), a, b, 0, func() { close(answered) }, release) }()
	defer func() {
		select {
		case <-release:
		default:
			close(release)
		}
		if r := <-callDone; r.Error != "" {
			t.Errorf("call: %s", r.Error)
		}
	}()

	opts := append(chromedp.DefaultExecAllocatorOptions[:0:0],
		chromedp.ExecPath(browser),
		chromedp.Flag("headless", true),
		chromedp.Flag("no-sandbox", true),
		chromedp.Flag("disable-gpu", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("no-first-run", true),
		chromedp.Flag("disable-dev-shm-usage", true),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(1100, 800),
	)
	actx, cancelA := chromedp.NewExecAllocator(context.Background(), opts...)
	defer cancelA()
	ctx, cancelB := chromedp.NewContext(actx)
	defer cancelB()
	// The first action starts the browser, which lives as long as the
	// context of that action: start it on ctx, not on a step's timeout.
	if err := chromedp.Do(ctx); err != nil {
		t.Fatalf("starting %s: %v", browser, err)
	}
	ctx, cancelT := context.WithTimeout(ctx, 120*time.Second)
	defer cancelT()

	shot := func(name string) {
		t.Helper()
		for _, v := range []struct {
			suffix string
			w, h   int64
			mobile bool
		}{{"", 1100, 800, false}, {"-phone", 390, 844, true}} {
			vp := chromedp.EmulateViewport(v.w, v.h)
			if v.mobile {
				vp = chromedp.EmulateViewport(v.w, v.h, chromedp.EmulateMobile)
			}
			if err := chromedp.Do(ctx, vp); err != nil {
				t.Fatalf("viewport: %v", err)
			}
			png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
			if err != nil {
				t.Fatalf("screenshot %s: %v", name, err)
			}
			if err := os.WriteFile(filepath.Join(shots, name+v.suffix+".png"), png, 0o644); err != nil {
				t.Fatal(err)
			}
		}
		chromedp.Do(ctx, chromedp.EmulateViewport(1100, 800))
	}
	// waitFor waits until an element matching css is in the page,
	// across the navigation a form submission starts.
	waitFor := func(css string) chromedp.Action[chromedp.Void] {
		return func(ctx context.Context, tg *chromedp.Target) (chromedp.Void, error) {
			expr := `!!document.querySelector(` + strconv.Quote(css) + `)`
			for {
				if ok, err := chromedp.Evaluate[bool](expr)(ctx, tg); err == nil && ok {
					return chromedp.Void{}, nil
				}
				select {
				case <-ctx.Done():
					return chromedp.Void{}, ctx.Err()
				case <-time.After(100 * time.Millisecond):
				}
			}
		}
	}
	// Forms are filled and sent by script in the page: chromedp's element
	// queries keep the document of before a form's navigation.
	js := func(expr string) chromedp.Action[chromedp.Void] {
		return func(ctx context.Context, tg *chromedp.Target) (chromedp.Void, error) {
			_, err := chromedp.Evaluate[bool](`(()=>{`+expr+`; return true})()`)(ctx, tg)
			return chromedp.Void{}, err
		}
	}
	q := func(css string) string { return `document.querySelector(` + strconv.Quote(css) + `)` }
	fill := func(css, v string) chromedp.Action[chromedp.Void] { return js(q(css) + `.value = ` + strconv.Quote(v)) }
	submit := func(css string) chromedp.Action[chromedp.Void] { return js(q(css) + `.form.requestSubmit()`) }
	click := func(css string) chromedp.Action[chromedp.Void] { return js(q(css) + `.click()`) }
	run := func(what string, actions ...chromedp.Action[chromedp.Void]) {
		t.Helper()
		for i, a := range actions {
			sctx, cancel := context.WithTimeout(ctx, 20*time.Second)
			err := chromedp.Do(sctx, a)
			cancel()
			if err != nil {
				loc, _ := chromedp.Run(ctx, chromedp.Location())
				body, _ := chromedp.Run(ctx, chromedp.Evaluate[string](`document.body ? document.body.innerText : ""`))
				t.Fatalf("%s, step %d: %v (at %s: %q)", what, i, err, loc, body)
			}
		}
	}
	text := func(sel string) string {
		t.Helper()
		s, err := chromedp.Run(ctx, chromedp.Evaluate[string](`(document.querySelector(`+strconv.Quote(sel)+`) || {}).innerText || ""`))
		if err != nil {
			t.Fatalf("text of %s: %v", sel, err)
		}
		return s
	}
	// waitText reloads url until the element sel contains want.
	waitText := func(url, sel, want string) string {
		t.Helper()
		var got string
		for range 60 {
			run("load "+url, chromedp.Navigate(url), waitFor(`h1`))
			if got = text(sel); strings.Contains(got, want) {
				return got
			}
			time.Sleep(250 * time.Millisecond)
		}
		t.Fatalf("%s: %q never showed %q; last: %q", url, sel, want, got)
		return ""
	}

	n1, n3 := ui[0].URL, ui[1].URL
	run("log in", chromedp.Navigate(n1+"/login"),
		fill(`input[name=password]`, pw),
		submit(`input[name=password]`),
		waitFor(`form[action="/subscribers"] input[name=ext]`))
	shot("subscribers")
	run("add a subscriber",
		fill(`form[action="/subscribers"] input[name=ext]`, "555"),
		fill(`form[action="/subscribers"] input[name=display]`, "Radio Room"),
		fill(`form[action="/subscribers"] input[name=password]`, "a phone secret"),
		submit(`form[action="/subscribers"] input[name=ext]`),
		waitFor(`#msg`))
	if msg := text(`#msg`); msg != "Stored 555" {
		t.Fatalf("after adding: %q", text(`#msg`))
	}
	shot("subscribers-added")
	// The record is in the DHT: another node's UI lists it.
	waitText(n3+"/subscribers", "#subscribers", "Radio Room")
	shot("subscribers-other-node")

	select {
	case <-answered:
	case <-ctx.Done():
		t.Fatal("the call was not answered")
	}
	// The calls page updates itself: wait on the live table, no reload.
	run("calls page", chromedp.Navigate(n1+"/calls"))
	var calls string
	for range 60 {
		calls = text(`#live`)
		if strings.Contains(calls, "MOS 4") && strings.Contains(calls, " → ") {
			break
		}
		time.Sleep(250 * time.Millisecond)
	}
	if !strings.Contains(calls, a.Ext) || !strings.Contains(calls, b.Ext) || !strings.Contains(calls, "MOS 4") || !strings.Contains(calls, " → ") {
		t.Fatalf("calls page without the call's path and MOS: %q", calls)
	}
	t.Logf("calls page: %s", strings.Join(strings.Fields(calls), " "))
	shot("calls")
	for _, p := range []string{"mesh", "phones", "node"} {
		run(p, chromedp.Navigate(n1+"/"+p), waitFor(`h1`))
		shot(p)
	}
	run("phones", chromedp.Navigate(n1+"/phones"), waitFor(`h1`))
	phonesText := text(`main`)
	if !strings.Contains(phonesText, a.Ext) || !strings.Contains(phonesText, "this node") {
		t.Errorf("phones page: %q", phonesText)
	}
	close(release)

	run("log out", chromedp.Navigate(n1+"/subscribers"),
		click(`form[action="/logout"] button`),
		waitFor(`a[href="/login"]`))
	run("subscribers after log-out", chromedp.Navigate(n1+"/subscribers"), waitFor(`h1`))
	n, err := chromedp.Run(ctx, chromedp.Evaluate[int](`document.querySelectorAll("input[name=ext]").length`))
	if err != nil || n != 0 {
		t.Errorf("the add form after logging out: %d, %v", n, err)
	}
	shot("logged-out")
	t.Logf("screenshots in %s", shots)
}
