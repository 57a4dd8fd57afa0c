# sipmesh build, test and release targets. `make` alone lists them.
# Lines starting with a target and carrying "## text" are the documentation
# `make help` prints; keep one on every target meant to be typed.

.DEFAULT_GOAL := help
SHELL := bash

# The official Go tarball installs to /usr/local/go; appending it lets `make`
# work on a fresh machine whose login shell has not picked it up yet, while a
# go already on PATH still wins.
export PATH := $(PATH):/usr/local/go/bin

# "## text" after a default documents the variable for `make help`. It is a
# make comment; no space before it, or the value would end in one.
GO           ?= go
VERSION      ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)## version stamped into binaries
TEST_TIMEOUT ?= 20m## go test -timeout; the namespace and simulation tests are slow under -race
BENCH        ?= .## benchmark name pattern for `make bench`
BENCHTIME    ?= 1s## go test -benchtime for `make bench` (e.g. 5s or 1000x)
PEER_ROUND   ?= 10s## length of one round of one server in `make bench-peers`
PEER_ROWS    ?= dns,register,reg-write,calls,rtp,gateway## rows `make bench-peers` measures
FUZZTIME     ?= 10s## how long `make fuzz` runs each fuzz target
STRESS_N     ?= 20000## mutated SIP messages `make stress` sends
STRESS_SEED  ?= 1## seed of `make stress`'s mutations
MIPS_MAX     ?= 12000000## byte limit for the stripped mipsle binary (12 MB)
MIPS_XZ_MAX  ?= 3000000## byte limit for the mipsle binary after xz -9e (3 MB: what a router's flash holds)
PKG_VERSION  ?= $(shell v=$$(git describe --tags --match 'v[0-9]*' 2>/dev/null) && echo "$$v" | sed 's/^v//; s/-/+git/; s/-/./g' || echo "0.0.0+git$$(git rev-list --count HEAD 2>/dev/null || echo 0).$$(git rev-parse --short HEAD 2>/dev/null || echo unknown)")## package version (v1.2-3-gabc → 1.2+git3.gabc)
IPK_ARCH_MIPSLE ?= mipsel_24kc## OpenWrt architecture of the mipsle .ipk (opkg print-architecture)
IPK_ARCH_ARM    ?= arm_cortex-a7_neon-vfpv4## OpenWrt architecture of the arm (GOARM=7) .ipk
IPK_ARCH_ARM64  ?= aarch64_cortex-a53## OpenWrt architecture of the arm64 .ipk

# -s -w drop the symbol table and DWARF: the binary has to fit on routers
# with 8-16 MiB of flash. -trimpath keeps build paths out of it.
LDFLAGS    := -s -w -X main.version=$(VERSION)
BUILDFLAGS := -trimpath -ldflags "$(LDFLAGS)"

# ROUTER_GCFLAGS: the router builds compile the node's control plane
# (configuration, web UI, provisioning, the uplink, the commands: code that
# runs a few times a second at most) without inlining, which keeps the
# mipsle binary some 200 KB smaller; the packages on the per-packet and
# per-request paths (ssr and the DHT, the relay, SIP transport, the proxy,
# DNS, NAT64 and the IP network) keep it. The registrar goes without: a
# REGISTER's time is its digest, signature and DHT round trip, not calls
# inside the registrar. Later -gcflags patterns take precedence.
# The standard and third-party packages that only the control plane uses
# (HTTP and TLS for the web UI and provisioning, X.509 and the public-key
# algorithms behind them, JSON, DHCP, flags, tables, iptables and the
# regexp and exec it needs) are compiled the same way, and so are fmt,
# log/slog and miekg/dns: formatting and logging are not where a request's
# time goes (the profiles of `make bench-peers`), and a repeated DNS query
# never reaches miekg/dns (dns64 replays its packed answer). Together some
# 600 KB: room for the IP data plane (TUN, CLAT, NAT64). The standard
# library's vendored text, IDNA, HTTP/2 and resolver packages, the
# elliptic-curve and RSA internals of TLS, reflect (fmt, JSON and slog
# use it; no request path does) and the MIME, PEM, compression and log
# packages of the web UI followed, 61 KB, for batched DNS and mesh I/O.
ROUTER_CONTROL_STD := net/http net/url mime crypto/tls crypto/x509 crypto/hpke \
	crypto/ecdsa crypto/rsa crypto/internal/fips140/nistec crypto/internal/fips140/nistec/fiat \
	crypto/internal/fips140/rsa crypto/internal/fips140/ecdsa crypto/internal/fips140/mlkem \
	encoding/json encoding/asn1 math/big text/tabwriter flag regexp regexp/syntax os/exec \
	fmt log/slog github.com/miekg/dns github.com/coreos/go-iptables/... \
	github.com/insomniacslk/dhcp/... github.com/gobwas/... \
	vendor/golang.org/x/text/... vendor/golang.org/x/net/idna vendor/golang.org/x/net/http2/... \
	vendor/golang.org/x/net/dns/dnsmessage vendor/golang.org/x/crypto/cryptobyte/... crypto/elliptic \
	crypto/ecdh crypto/internal/fips140/bigmod crypto/internal/fips140/ecdh crypto/internal/fips140/sha3 \
	reflect internal/fmtsort net/textproto mime/... encoding/pem log compress/... html
ROUTER_GCFLAGS := -gcflags='github.com/sipmesh/sipmesh/...=-l' \
	$(foreach p,ssr/... sipalg sipnet proxy dns64 nat64/... meship,-gcflags='github.com/sipmesh/sipmesh/$(p)=') \
	$(foreach p,$(ROUTER_CONTROL_STD),-gcflags='$(p)=-l')

# Go files; testdata may hold deliberately malformed inputs.
GOFILES = $(shell find . -name '*.go' -not -path './.git/*' -not -path '*/testdata/*')

.PHONY: help build test bench bench-peers demo cross package lint fmtcheck fuzz stress clean

help: ## list the targets and variables
	@echo 'Usage: make [target] [VARIABLE=value ...]'
	@echo
	@echo 'Targets:'
	@awk -F':.*## ' '/^[a-z][a-z-]*:.*## /{printf "  %-8s %s\n", $$1, $$2}' $(MAKEFILE_LIST)
	@echo
	@echo 'Variables:'
	@awk -F' *\\?= *|## ' '/^[A-Z0-9_]+ +\?=.*## /{printf "  %-16s %s\n", $$1, $$3}' $(MAKEFILE_LIST)

build: ## build a static bin/sipmesh for this machine
	CGO_ENABLED=0 $(GO) build $(BUILDFLAGS) -o bin/sipmesh ./cmd/sipmesh

# test first sets up the Debian packages the tests use (scripts/test-deps.sh:
# installs them as root, names them otherwise), then runs go test with -json
# through internal/testsum, which prints what plain go test would plus a
# list of every skipped test and why. Without a C compiler there is no cgo,
# so no -race: the run says so instead of failing on it.
test: fmtcheck ## everything CI runs: installs the test packages (as root), gofmt check, go vet, all tests with -race, a list of skipped tests
	@scripts/test-deps.sh
	$(GO) vet ./...
	$(GO) vet -tags router ./cmd/sipmesh
	@set -o pipefail; race=-race; \
	if [ "$$($(GO) env CGO_ENABLED)" != 1 ]; then \
		echo "*** no C compiler (Debian package gcc): testing WITHOUT the race detector ***"; race=; \
	fi; \
	echo "$(GO) test $$race -count=1 -timeout $(TEST_TIMEOUT) ./... (-json, summarized by internal/testsum)"; \
	$(GO) build -o bin/testsum ./internal/testsum && \
	$(GO) test $$race -json -count=1 -timeout $(TEST_TIMEOUT) ./... | bin/testsum

fmtcheck:
	@files=$$(gofmt -l $(GOFILES)); \
	if [ -n "$$files" ]; then echo "gofmt: these files need formatting (run gofmt -w):"; echo "$$files"; exit 1; fi

bench: ## run the benchmarks (BENCH, BENCHTIME); installs the peers they compare against (as root)
	@scripts/test-deps.sh
	$(GO) test -run '^$$' -bench '$(BENCH)' -benchtime $(BENCHTIME) -benchmem ./...

# demo builds first and says so: the first build compiles every dependency
# (about a minute on two cores) and go run would be silent meanwhile.
# bench-peers installs the peers it measures against if they are missing
# (Debian packages; needs root, as the namespaces do).
PEER_TOOLS := sipp:sip-tester kamailio:kamailio unbound:unbound dnsperf:dnsperf taskset:util-linux rtpengine:rtpengine-daemon

bench-peers: ## as root: `sipmesh node` vs Kamailio/Unbound/rtpengine in network namespaces, one pinned core each (PEER_ROUND, PEER_ROWS)
	@missing=; for t in $(PEER_TOOLS); do command -v $${t%%:*} >/dev/null || missing="$$missing $${t#*:}"; done; \
	if [ -n "$$missing" ]; then echo "installing$$missing"; apt-get install -y$$missing; fi
	$(GO) test -tags peerbench -count=1 -timeout 90m -v -run '^TestPeers$$' ./internal/peerbench \
		-args -peerbench.round $(PEER_ROUND) -peerbench.rows $(PEER_ROWS)

demo: ## run the telephone demo: phones call across a 12-node in-memory mesh
	@echo "building sipmesh (the first build compiles all dependencies: about a minute)…"
	@CGO_ENABLED=0 $(GO) build $(BUILDFLAGS) -o bin/sipmesh ./cmd/sipmesh
	bin/sipmesh demo

# The mipsle binary is linked with -R 4096: Go rounds a MIPS binary's
# segments to 64 KiB for kernels with 64 KiB pages, but OpenWrt's MIPS
# kernels (ramips, ath79) use 4 KiB pages, so the rounding is only padding
# in flash (some 85 KB). A mipsle kernel with larger pages would refuse to
# map the binary: none is among OpenWrt's targets.
cross: ## build static binaries for router CPUs into bin/; print their stripped and xz sizes; check the mipsle budget
	@set -e; for arch in amd64 arm64 arm mipsle; do \
		case $$arch in \
		arm)    extra=GOARM=7; rquantum= ;; \
		mipsle) extra=GOMIPS=softfloat; rquantum='-R 4096' ;; \
		*)      extra=; rquantum= ;; \
		esac; \
		if [ $$arch = amd64 ]; then \
			echo "linux/$$arch"; \
			env CGO_ENABLED=0 GOOS=linux GOARCH=$$arch $(GO) build $(BUILDFLAGS) -o bin/sipmesh-$$arch ./cmd/sipmesh; \
		else \
			echo "linux/$$arch$${extra:+ $$extra} -tags router (control plane without inlining)"; \
			env CGO_ENABLED=0 GOOS=linux GOARCH=$$arch $$extra $(GO) build -trimpath -ldflags "$(LDFLAGS) $$rquantum" -tags router $(ROUTER_GCFLAGS) -o bin/sipmesh-$$arch ./cmd/sipmesh; \
		fi; \
	done
	@$(footprint)

# footprint prints each binary's stripped size and its size after xz -9e
# (what a squashfs/jffs2 flash really holds) and fails when the mipsle
# binary is over MIPS_MAX or MIPS_XZ_MAX. The four xz runs go in parallel:
# each takes some 15 s of CPU.
define footprint
set -e; \
command -v xz >/dev/null || { echo "FAIL: the size check needs xz (Debian package xz-utils)"; exit 1; }; \
for a in amd64 arm64 arm mipsle; do xz -9e -c bin/sipmesh-$$a | wc -c > bin/.xz-$$a & done; wait; \
printf '%-20s %10s %10s %9s\n' binary stripped xz-9e "xz MB"; \
for a in amd64 arm64 arm mipsle; do \
	awk -v f=bin/sipmesh-$$a -v s=$$(stat -c %s bin/sipmesh-$$a) -v x=$$(cat bin/.xz-$$a) \
		'BEGIN{printf "%-20s %10d %10d %9.2f\n", f, s, x, x/1e6}'; \
done; \
size=$$(stat -c %s bin/sipmesh-mipsle); xzsize=$$(cat bin/.xz-mipsle); rm -f bin/.xz-*; \
if [ $$size -gt $(MIPS_MAX) ]; then echo "FAIL: bin/sipmesh-mipsle is $$size bytes stripped, over the $(MIPS_MAX)-byte budget"; exit 1; fi; \
if [ $$xzsize -gt $(MIPS_XZ_MAX) ]; then echo "FAIL: bin/sipmesh-mipsle is $$xzsize bytes after xz -9e, over the $(MIPS_XZ_MAX)-byte budget"; exit 1; fi; \
echo "mipsle within budget: stripped $$size <= $(MIPS_MAX), xz $$xzsize <= $(MIPS_XZ_MAX) bytes"
endef

# MKPKG writes one package (packaging/mkpkg.go, a build tool outside the
# binary); the commit time as entry mtime makes packages reproducible.
MKPKG = SOURCE_DATE_EPOCH=$$(git log -1 --format=%ct 2>/dev/null || echo 0) $(GO) run packaging/mkpkg.go -version '$(PKG_VERSION)' -out bin/pkg

package: cross ## OpenWrt .ipk for mipsle, arm, arm64 and a Debian .deb for amd64 into bin/pkg/ (after `make cross`)
	@set -e; rm -rf bin/pkg; \
	$(MKPKG) -format ipk -arch $(IPK_ARCH_MIPSLE) -bin bin/sipmesh-mipsle >/dev/null; \
	$(MKPKG) -format ipk -arch $(IPK_ARCH_ARM) -bin bin/sipmesh-arm >/dev/null; \
	$(MKPKG) -format ipk -arch $(IPK_ARCH_ARM64) -bin bin/sipmesh-arm64 >/dev/null; \
	$(MKPKG) -format deb -arch amd64 -bin bin/sipmesh-amd64 >/dev/null; \
	echo; printf '%-66s %10s\n' package bytes; \
	for p in bin/pkg/*; do printf '%-66s %10d\n' $$p $$(stat -c %s $$p); done

lint: fmtcheck ## gofmt and go vet, plus staticcheck when it is installed
	$(GO) vet ./...
	@if command -v staticcheck >/dev/null; then staticcheck ./...; else echo "staticcheck not installed; skipped"; fi

stress: ## as root: STRESS_N mutated SIP messages at a real node in a network namespace, probed after each (cmd/sipmesh TestSIPStress)
	@scripts/test-deps.sh
	$(GO) test -count=1 -timeout 90m -v -run '^TestSIPStress$$' ./cmd/sipmesh -args -sipstress.n $(STRESS_N) -sipstress.seed $(STRESS_SEED)

fuzz: ## run every Fuzz* target for FUZZTIME each (the corpus in testdata/fuzz is kept)
	@set -eo pipefail; \
	targets=$$($(GO) test -list '^Fuzz' ./... | awk '/^Fuzz/ {f[n++] = $$1; next} /^ok/ {for (i = 0; i < n; i++) print $$2 " " f[i]; n = 0}'); \
	if [ -z "$$targets" ]; then echo "no fuzz targets"; exit 0; fi; \
	while read -r pkg target; do \
		echo "== $$pkg $$target"; \
		$(GO) test -run '^$$' -fuzz "^$$target\$$" -fuzztime $(FUZZTIME) $$pkg; \
	done <<< "$$targets"

clean: ## remove build outputs
	rm -rf bin
