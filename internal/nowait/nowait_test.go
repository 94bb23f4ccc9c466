package nowait

import (
	"bytes"
	"io"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestAdvance(t *testing.T) {
	for _, tc := range []struct {
		name string
		n    int
		want []string
	}{
		{"nothing", 0, []string{"abc", "de", "f"}},
		{"inside the first", 2, []string{"c", "de", "f"}},
		{"the whole first", 3, []string{"de", "f"}},
		{"into the second", 4, []string{"e", "f"}},
		{"all", 6, []string{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			iov := [][]byte{[]byte("abc"), []byte("de"), []byte("f")}
			got := []string{}
			for _, b := range Advance(iov, tc.n) {
				got = append(got, string(b))
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("Advance(%d) (-want +got):\n%s", tc.n, diff)
			}
		})
	}
}

// TestWritevTakesWhatFits: on a connection nobody reads, Writev returns at
// once with what the socket took (eventually nothing), and the bytes it
// reports are exactly the first bytes the peer reads.
func TestWritevTakesWhatFits(t *testing.T) {
	c, s := pair(t)
	rc := Raw(c)
	if rc == nil {
		t.Fatal("no raw descriptor for a TCP connection")
	}
	chunk := bytes.Repeat([]byte("0123456789abcdef"), 1<<16) // 1 MiB
	var sent bytes.Buffer
	full := false
	for i := 0; i < 256 && !full; i++ {
		n, err := Writev(rc, [][]byte{chunk[:100], chunk[100:]})
		sent.Write(chunk[:n])
		full = n < len(chunk)
		if n == 0 && err == nil {
			t.Fatal("nothing written and no error")
		}
	}
	if !full {
		t.Fatal("256 MiB went into a socket nobody reads without filling it")
	}
	c.Close()
	got, err := io.ReadAll(s)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, sent.Bytes()) {
		t.Fatalf("the peer read %d bytes that differ from the %d reported written", len(got), sent.Len())
	}
	if Raw(struct{}{}) != nil {
		t.Error("Raw of a non-socket is not nil")
	}
}
