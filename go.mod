module github.com/sipmesh/sipmesh

go 1.25
