package dht

import "errors"

// Errors of the DHT. Refusals a holder reports back travel as a code and
// map to these on the writer's side.
var (
	ErrMalformed    = errors.New("dht: malformed message")
	ErrInvalid      = errors.New("dht: invalid record")
	ErrTooBig       = errors.New("dht: too big")
	ErrExpired      = errors.New("dht: record expired")
	ErrBadSignature = errors.New("dht: bad signature")
	ErrStale        = errors.New("dht: not newer than the stored version")
	ErrQuota        = errors.New("dht: over quota")
	ErrForbidden    = errors.New("dht: refused by policy")
	ErrTimeout      = errors.New("dht: no answer")
	ErrRefused      = errors.New("dht: refused")
	ErrClosed       = errors.New("dht: stopped")
	// ErrBusy reports too many requests in flight at one node.
	ErrBusy = errors.New("dht: too many requests in flight")

	errShort = errors.New("dht: malformed message: truncated")
)

// Codes of STORE_ACK and GET_REPLY (FORMAT.md).
const (
	codeOK        = 0
	codeInvalid   = 1
	codeBadSig    = 2
	codeStale     = 3
	codeQuota     = 4
	codeForbidden = 5
	codeExpired   = 6
	// codeKeep answers a hand-off: stored, and the sender is one of the
	// receiver's replicas, so it keeps its copy (the owner's view of its
	// replica set wins over the sender's view of its successors).
	codeKeep = 7
	// codeBusy answers a GET: the owner holds nothing under the key and
	// cannot ask its replicas now (too many requests in flight). "Not
	// found" would be a lie the asker caches (a DNS NXDOMAIN, a 404);
	// busy is an error it can retry or pass on as one (SERVFAIL, 503).
	codeBusy = 8
)

func codeOf(err error) byte {
	switch {
	case err == nil:
		return codeOK
	case errors.Is(err, ErrBadSignature):
		return codeBadSig
	case errors.Is(err, ErrStale):
		return codeStale
	case errors.Is(err, ErrQuota):
		return codeQuota
	case errors.Is(err, ErrForbidden):
		return codeForbidden
	case errors.Is(err, ErrExpired):
		return codeExpired
	}
	return codeInvalid
}

func errOf(code byte) error {
	switch code {
	case codeOK, codeKeep:
		return nil
	case codeBusy:
		return ErrBusy
	case codeBadSig:
		return ErrBadSignature
	case codeStale:
		return ErrStale
	case codeQuota:
		return ErrQuota
	case codeForbidden:
		return ErrForbidden
	case codeExpired:
		return ErrExpired
	}
	return ErrRefused
}
