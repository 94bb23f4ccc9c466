package disk

import (
	"hash/crc32"
	"math/rand/v2"
	"testing"
)

func TestCRCAppendChunk(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for _, n := range []int{0, 1, 4, 63, 4096} {
		for chunks := 1; chunks <= 5; chunks++ {
			data := make([]byte, n+chunks*ChunkSize)
			for i := range data {
				data[i] = byte(rng.Uint32())
			}
			if chunks == 3 {
				clear(data[n:]) // zero chunks too
			}
			sum := crc32.Checksum(data[:n], castagnoli)
			for c := range chunks {
				b := data[n+c*ChunkSize : n+(c+1)*ChunkSize]
				sum = crcAppendChunk(sum, crc32.Checksum(b, castagnoli))
			}
			if want := crc32.Checksum(data, castagnoli); sum != want {
				t.Fatalf("prefix %d, %d chunks: combined %08x, direct %08x", n, chunks, sum, want)
			}
		}
	}
}
