module github.com/sipmesh/sipmesh

go 1.25.0

require (
	github.com/insomniacslk/dhcp v0.0.0-20260901064844-234b97448fae
	golang.org/x/sys v0.47.0
)

require (
	github.com/josharian/native v1.1.0 // indirect
	github.com/pierrec/lz4/v4 v4.1.14 // indirect
	github.com/u-root/uio v0.0.0-20230220225925-ffce2a382923 // indirect
)
