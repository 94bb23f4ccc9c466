package core

// FNV-1a as Sheepdog uses it (include/sheepdog_proto.h). Placement and VDI
// ids must be bit-exact with the original so that its tools' outputs and
// functional tests can be compared with ours.

const (
	fnv1a64Init  uint64 = 0xcbf29ce484222325
	fnv1a64Prime uint64 = 0x100000001b3
)

// fnv64a hashes buf into hval (Sheepdog's fnv_64a_buf).
func fnv64a(buf []byte, hval uint64) uint64 {
	for _, b := range buf {
		hval ^= uint64(b)
		hval *= fnv1a64Prime
	}
	return hval
}

// fnv64a64 hashes the eight little-endian bytes of v into hval
// (Sheepdog's fnv_64a_64).
func fnv64a64(v, hval uint64) uint64 {
	for i := 0; i < 8; i++ {
		hval ^= (v >> (8 * i)) & 0xff
		hval *= fnv1a64Prime
	}
	return hval
}

// sdHash is Sheepdog's sd_hash: FNV-1a of buf, then mixed with itself.
func sdHash(buf []byte) uint64 {
	h := fnv64a(buf, fnv1a64Init)
	return fnv64a64(h, h)
}

// sdHashNext is Sheepdog's sd_hash_next, the step between a node's vnodes.
func sdHashNext(h uint64) uint64 { return fnv64a64(h, h) }

// HashOID is Sheepdog's sd_hash_oid: the ring position of an object.
func HashOID(oid OID) uint64 {
	h := fnv64a64(uint64(oid), fnv1a64Init)
	return fnv64a64(h, h)
}

// HashVDIName is Sheepdog's sd_hash_vdi: the preferred VDI id of a name.
func HashVDIName(name string) uint32 {
	h := fnv1a64Init
	for i := 0; i < len(name); i++ {
		h ^= uint64(name[i])
		h *= fnv1a64Prime
	}
	return uint32(h & (MaxVDIs - 1))
}
