module github.com/sipmesh/sipmesh

go 1.25.0

require (
	github.com/pion/rtp v1.10.6
	github.com/pion/sdp/v3 v3.0.20
	golang.org/x/sys v0.47.0
)

require github.com/pion/randutil v0.1.0 // indirect
