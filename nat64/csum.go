package nat64

import "encoding/binary"

// sum adds b to acc as big-endian 16-bit words (RFC 1071 §4.1), padding an
// odd last byte with zero. Adding 32-bit words is the same sum: 2^16 is 1
// modulo 0xffff, and fold brings the carries back in.
func sum(acc uint64, b []byte) uint64 {
	for len(b) >= 8 {
		acc += uint64(binary.BigEndian.Uint32(b)) + uint64(binary.BigEndian.Uint32(b[4:]))
		b = b[8:]
	}
	for len(b) >= 2 {
		acc += uint64(binary.BigEndian.Uint16(b))
		b = b[2:]
	}
	if len(b) == 1 {
		acc += uint64(b[0]) << 8
	}
	return acc
}

// fold reduces acc to 16 bits with end-around carry.
func fold(acc uint64) uint16 {
	for acc>>16 != 0 {
		acc = acc&0xffff + acc>>16
	}
	return uint16(acc)
}

// checksum is the Internet checksum of the words summed into acc.
func checksum(acc uint64) uint16 { return ^fold(acc) }

// adjust updates checksum hc for fields whose words summed to old and now
// sum to new: RFC 1624 eqn. 3, HC' = ~(~HC + ~m + m').
func adjust(hc uint16, old, new uint64) uint16 {
	return ^fold(uint64(^hc) + uint64(^fold(old)) + uint64(fold(new)))
}

// pseudo6 sums the IPv6 pseudo-header (RFC 8200 §8.1).
func pseudo6(src, dst *[16]byte, length int, nh uint8) uint64 {
	return sum(sum(0, src[:]), dst[:]) + uint64(length>>16) + uint64(length&0xffff) + uint64(nh)
}

// pseudo4 sums the IPv4 pseudo-header (RFC 768, RFC 9293 §3.1).
func pseudo4(src, dst *[4]byte, length int, proto uint8) uint64 {
	return sum(sum(0, src[:]), dst[:]) + uint64(length&0xffff) + uint64(proto)
}
