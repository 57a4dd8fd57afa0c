package dht

// DenyAnswer is what a node that takes part in the ring but betrays the
// DHT answers to the DHT datagram payload: "not found" to every GET, "stored"
// to every STORE that wants an answer (and it stores nothing), nothing to
// the rest. It is the eclipse attacker of package dhtsim and of the tests,
// kept here because it speaks the wire format; a real node never calls
// it. It appends to b and returns nil when it stays silent.
func DenyAnswer(b, payload []byte) []byte {
	m, err := decode(payload)
	if err != nil {
		return nil
	}
	switch {
	case m.typ == msgGet:
		return encodeGetReply(b, m.req, codeOK, 0, 0, 0, nil)
	case m.typ == msgStore && m.flags&storeAck != 0:
		return encodeStoreAck(b, m.req, codeOK)
	}
	return nil
}
