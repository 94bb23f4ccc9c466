package disk

import "hash/crc32"

// A write of whole, aligned chunks is checksummed once: the applier needs
// each chunk's CRC32C for the checksum table, and the journal record's
// CRC32C over the same bytes follows from them. Appending a chunk to a
// CRC is linear over GF(2): crc(A‖B) = Z(crc(A)) ⊕ crc(B), where Z is the
// fixed 32×32 bit matrix that feeds 4096 zero bytes through the CRC (the
// combination zlib's crc32_combine performs for any length).

// crcShiftChunk is Z for ChunkSize bytes, as the 32 images of the unit
// vectors.
var crcShiftChunk = func() [32]uint32 {
	var m [32]uint32
	// One zero bit: the reflected polynomial in the first row, then shifts.
	m[0] = crc32.Castagnoli
	for i := 1; i < 32; i++ {
		m[i] = 1 << (i - 1)
	}
	// Squaring doubles the number of zero bits: 8 bits, then 4096 bytes.
	for n := 1; n < 8*ChunkSize; n *= 2 {
		m = gf2Square(m)
	}
	return m
}()

func gf2Times(m *[32]uint32, v uint32) uint32 {
	var sum uint32
	for i := 0; v != 0; i, v = i+1, v>>1 {
		if v&1 != 0 {
			sum ^= m[i]
		}
	}
	return sum
}

func gf2Square(m [32]uint32) [32]uint32 {
	var sq [32]uint32
	for i := range sq {
		sq[i] = gf2Times(&m, m[i])
	}
	return sq
}

// crcAppendChunk returns the CRC32C of A‖C given crc = CRC32C(A) and
// chunk = CRC32C(C), for a C of ChunkSize bytes.
func crcAppendChunk(crc, chunk uint32) uint32 {
	return gf2Times(&crcShiftChunk, crc) ^ chunk
}
