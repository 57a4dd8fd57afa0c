//go:build ignore

// mkpkg builds one sipmesh package: `make package` runs it as
//
//	go run packaging/mkpkg.go -format ipk -arch mipsel_24kc -version 1.0 \
//		-bin bin/sipmesh-mipsle -out bin/pkg
//
// and it prints the path of the package it wrote. It is a build tool, not
// part of the sipmesh binary, hence the ignore build tag: `go run` of the
// file builds it, `go build ./...` and the one-main-package rule skip it.
package main

import (
	"bytes"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/sipmesh/sipmesh/packaging"
)

func main() {
	format := flag.String("format", "", "ipk or deb")
	arch := flag.String("arch", "", "package architecture (mipsel_24kc, amd64, …)")
	version := flag.String("version", "", "package version (starts with a digit)")
	maintainer := flag.String("maintainer", "sipmesh developers", "Maintainer field")
	bin := flag.String("bin", "", "the static stripped sipmesh binary")
	out := flag.String("out", ".", "output directory")
	epoch := flag.String("mtime", os.Getenv("SOURCE_DATE_EPOCH"), "mtime of every entry, Unix seconds (default $SOURCE_DATE_EPOCH, else 0)")
	flag.Parse()
	var mtime int64
	if *epoch != "" {
		var err error
		if mtime, err = strconv.ParseInt(*epoch, 10, 64); err != nil {
			fail(fmt.Errorf("-mtime %q: %v", *epoch, err))
		}
	}
	spec := packaging.Spec{
		Format: packaging.Format(*format), Arch: *arch, Version: *version,
		Maintainer: *maintainer, Binary: *bin, MTime: time.Unix(mtime, 0),
	}
	var buf bytes.Buffer
	if err := packaging.Build(&buf, spec); err != nil {
		fail(err)
	}
	if err := os.MkdirAll(*out, 0o755); err != nil {
		fail(err)
	}
	path := filepath.Join(*out, spec.FileName())
	if err := os.WriteFile(path, buf.Bytes(), 0o644); err != nil {
		fail(err)
	}
	fmt.Println(path)
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "mkpkg:", err)
	os.Exit(1)
}
