package daemon

import (
	"bytes"
	"log/slog"
	"os"
	"path/filepath"
	"testing"

	"github.com/sheepdog-go/sheepdog/core"
	"github.com/sheepdog-go/sheepdog/disk"
)

// TestVerifyRead checks the read vdi check uses: it finds a flipped byte
// anywhere in the object (beyond the first chunk it holds at a time too),
// passes a clean object, reports a missing one, and returns no data.
func TestVerifyRead(t *testing.T) {
	dir := t.TempDir()
	opt := disk.Options{Logger: slog.New(slog.DiscardHandler)}
	s, err := disk.Open(dir, opt)
	if err != nil {
		t.Fatal(err)
	}
	data := bytes.Repeat([]byte("sheepdog"), (1<<20)/8)
	for _, oid := range []uint64{0xa, 0xb} {
		if err := s.Write(oid, disk.ObjectMeta{Version: 1}, 0, data, true); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	// Damage object a in its third verifying chunk.
	path := filepath.Join(dir, "obj", "000000000000000a")
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	off := int64(2*verifyChunk + 777)
	var c [1]byte
	if _, err := f.ReadAt(c[:], off); err != nil {
		t.Fatal(err)
	}
	c[0] ^= 0x10
	if _, err := f.WriteAt(c[:], off); err != nil {
		t.Fatal(err)
	}
	f.Close()
	if s, err = disk.Open(dir, opt); err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	d := &Daemon{store: s, log: slog.New(slog.DiscardHandler)}
	tests := []struct {
		oid  core.OID
		want core.Code
	}{
		{0xa, core.ErrCorrupt},
		{0xb, core.OK},
		{0xc, core.ErrNoObject},
	}
	for _, tt := range tests {
		res := d.verify(core.DiskOp{Kind: core.DiskRead, OID: tt.oid, Len: 4 << 20, Verify: true})
		if res.Err != tt.want || res.Data != nil {
			t.Errorf("verify(%v) = %v with %d bytes, want %v and no data", tt.oid, res.Err, len(res.Data), tt.want)
		}
	}
}
