package gateway

import (
	"fmt"
	"os"
	"reflect"
	"slices"
	"strings"
	"testing"
)

// TestConfigKeysComplete: the documented keys are exactly the keys the
// parser knows, so neither the README nor `sipmesh node --help` can miss
// one (mesh-port and log-level once were).
func TestConfigKeysComplete(t *testing.T) {
	var doc, parsed []string
	for _, k := range ConfigKeys() {
		doc = append(doc, k.Name)
		if k.Default == "" || k.Doc == "" {
			t.Errorf("%s: empty default or doc: %+v", k.Name, k)
		}
	}
	for k := range setters {
		parsed = append(parsed, k)
	}
	slices.Sort(doc)
	slices.Sort(parsed)
	if !slices.Equal(doc, parsed) {
		t.Errorf("documented keys %v\nparser's keys    %v", doc, parsed)
	}
}

// TestConfigKeysDefaults: every default that is a value parses back to the
// default options, so the listed defaults are the real ones.
func TestConfigKeysDefaults(t *testing.T) {
	var cfg strings.Builder
	for _, k := range ConfigKeys() {
		if !strings.HasPrefix(k.Default, "(") {
			fmt.Fprintf(&cfg, "%s %s\n", k.Name, k.Default)
		}
	}
	cfg.WriteString("mesh-interface wlan0\n")
	got, err := ParseConfig(strings.NewReader(cfg.String()))
	if err != nil {
		t.Fatalf("%v\n%s", err, cfg.String())
	}
	want := DefaultOptions()
	want.MeshInterfaces = []string{"wlan0"}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("the listed defaults parse to\n%+v\nwant DefaultOptions\n%+v\nconfig:\n%s", got, want, cfg.String())
	}
}

// configKeysMarkdown is the README's table of keys, made from ConfigKeys.
func configKeysMarkdown() string {
	var b strings.Builder
	b.WriteString("| key | default | sets |\n|---|---|---|\n")
	for _, k := range ConfigKeys() {
		def := "`" + k.Default + "`"
		if strings.HasPrefix(k.Default, "(") {
			def = strings.Trim(k.Default, "()")
		}
		doc := k.Doc
		if k.Repeatable {
			doc += " (repeatable)"
		}
		fmt.Fprintf(&b, "| `%s` | %s | %s |\n", k.Name, def, doc)
	}
	return b.String()
}

// TestREADMEConfigKeys: the README lists every key with its default, as
// ConfigKeys has them. On failure it prints the table to paste.
func TestREADMEConfigKeys(t *testing.T) {
	readme, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	want := configKeysMarkdown()
	if !strings.Contains(string(readme), want) {
		t.Errorf("README.md does not hold the table of config keys as ConfigKeys has them; replace its table with:\n\n%s", want)
	}
}
