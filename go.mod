module github.com/sipmesh/sipmesh

go 1.25.0

require (
	github.com/miekg/dns v1.1.73
	github.com/pion/rtp v1.10.6
	github.com/pion/sdp/v3 v3.0.20
	golang.org/x/sys v0.47.0
)

require (
	github.com/pion/randutil v0.1.0 // indirect
	golang.org/x/net v0.57.0 // indirect
)
