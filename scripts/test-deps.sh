#!/usr/bin/env bash
# The Debian packages sipmesh's tests and benchmarks use, and their set-up.
# `make test`, `make bench` and `.ci/run` all call this script, so there is
# one list and it cannot drift.
#
#   scripts/test-deps.sh          install what is missing (as root), or say
#                                 what to install (as another user)
#   scripts/test-deps.sh --list   print the package names, one a line
#
# As root, a missing package is installed (apt-get update once, then one
# apt-get install) and each one is named with the reason before it is.
# As another user nothing is installed: the script prints the apt-get line to
# run, and the tests that need a missing tool (all of them also need root)
# are skipped with a message. SIPMESH_NO_APT=1 makes root behave the same
# way (for a developer machine that should not change).
#
# Extend the list when a test starts using a real peer: as root, a test whose
# tool is missing fails rather than skip (a silent skip would hide the gap),
# and TestDepsListed in internal/repotest fails when a test names a Debian
# package that is not here.
set -euo pipefail

# package|command that proves it is there (empty: check the package only)|why
PACKAGES=(
	"iproute2|ip|ip netns and veth pairs for the network-namespace tests"
	"procps|sysctl|sysctl (DAD off, IPv6 forwarding) in those namespaces"
	"gcc|gcc|cgo, which go test -race needs"
	"libc6-dev||C headers and libc for cgo (go test -race)"
	"make|make|the Makefile is the one way to build and test"
	"ca-certificates||HTTPS to the Go module proxy"
	"git|git|go's VCS stamping and the Makefile's VERSION"
	"dnsutils|dig|dig, the real DNS client of the DNS64 namespace tests"
	"unbound|unbound|the real upstream resolver of the DNS64 tests and bar of its benchmark"
	"sipsak|sipsak|a real SIP client registering in the registrar namespace tests"
	"baresip-core|baresip|real SIP phones registering and calling in the namespace tests"
	"busybox|busybox|udhcpc, the real DHCP client of the DHCP and phone namespace tests"
	"kamailio|kamailio|the bar of the registrar benchmark (make bench), the SIP provider of the uplink's trunk test and example.net's SIP server in the gateway namespace test"
	"coturn|turnserver|a real STUN server (RFC 8489) for the uplink's public-address test and the gateway-behind-NAT namespace test"
	"sipvicious|svwar|the extension scanner the gateway namespace test runs from the Internet (it must learn nothing)"
	"dnsmasq-base|dnsmasq|the bar of the DHCP benchmark (make bench) and the Internet's DNS (NAPTR, SRV, A of example.net) in the gateway namespace test"
	"tayga|tayga|the bar of the NAT64 benchmarks (make bench: nat64/tun64, the gateway's NAT64 path)"
	"iptables|iptables|iptables and ip6tables (go-iptables) of the gateway NAT64's and the CLAT's rules, checked by nat64/tun64's and cmd/sipmesh's namespace tests, and the NAT router (MASQUERADE) in front of a gateway in the gateway-behind-NAT namespace test"
	"iputils-ping|ping|ping -6 through the NAT64 TUN in nat64/tun64's namespace test, and across the mesh in the IP network test and benchmark"
	"iperf3|iperf3|TCP throughput of the IP network benchmark (make bench: sipmesh vs Yggdrasil vs the kernel)"
	"yggdrasil|yggdrasil|the bar of the IP network benchmark (make bench): an IPv6 overlay on the same veths"
	"chromium|chromium|headless browser of the web UI test (webui, driven over the DevTools protocol)"
	"xz-utils|xz|make cross and make package print and check the xz size; packaging's tests"
	"dpkg|dpkg|packaging's tests read and install the .deb (dpkg-deb, dpkg --root)"
	"systemd|systemd-analyze|packaging's tests verify the systemd unit (systemd-analyze verify)"
)

if [[ ${1:-} == --list ]]; then
	for entry in "${PACKAGES[@]}"; do echo "${entry%%|*}"; done
	exit 0
fi
if [[ $# -gt 0 ]]; then
	echo "usage: $0 [--list]" >&2
	exit 2
fi

# installed reports whether a package is there: dpkg's word on Debian, the
# command on PATH (sbin included) elsewhere.
installed() {
	local pkg=$1 cmd=$2
	if command -v dpkg-query >/dev/null; then
		[[ $(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null) == installed ]]
	elif [[ -n $cmd ]]; then
		PATH="$PATH:/usr/sbin:/sbin" command -v "$cmd" >/dev/null
	else
		return 0 # nothing to check it by; the tests will say
	fi
}

missing=()
reasons=()
for entry in "${PACKAGES[@]}"; do
	IFS='|' read -r pkg cmd why <<<"$entry"
	if ! installed "$pkg" "$cmd"; then
		missing+=("$pkg")
		reasons+=("$pkg: $why")
	fi
done

if [[ ${#missing[@]} -eq 0 ]]; then
	echo "test-deps: the ${#PACKAGES[@]} Debian packages the tests use are installed."
	exit 0
fi

if [[ $(id -u) -eq 0 && -z ${SIPMESH_NO_APT:-} ]] && command -v apt-get >/dev/null; then
	echo "test-deps: installing ${#missing[@]} missing Debian package(s) the tests need:"
	printf '  %s\n' "${reasons[@]}"
	echo "test-deps: apt-get update"
	apt-get update -qq
	echo "test-deps: apt-get install ${missing[*]}"
	# </dev/null: nothing here may wait for an answer (CI has no stdin).
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
		"${missing[@]}" </dev/null
	echo "test-deps: installed ${missing[*]}"
	exit 0
fi

cat <<EOF

*** test-deps: ${#missing[@]} Debian package(s) the tests use are missing:
$(printf '      %s\n' "${reasons[@]}")
*** Not installing them (not root, no apt-get, or SIPMESH_NO_APT set). To install:
      sudo apt-get install --no-install-recommends ${missing[*]}
*** The tests that need them also need root; as another user they are skipped
*** (the summary at the end lists them). As root, a missing tool fails its test.

EOF
