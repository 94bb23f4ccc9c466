package disk

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// journalFiles counts the journal files of dir (spares, kept for reuse,
// are no journal files: they hold no records).
func journalFiles(t *testing.T, dir string) int {
	t.Helper()
	ents, err := os.ReadDir(filepath.Join(dir, "journal"))
	must(t, err)
	n := 0
	for _, e := range ents {
		if !strings.HasPrefix(e.Name(), sparePrefix) {
			n++
		}
	}
	return n
}

// waitFor polls cond for up to 10 s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

// TestCheckpointFailure: while checkpoints cannot write sidecars, journals
// are kept (and reads still verify against the in-memory checksums); the
// first checkpoint that succeeds carries over the failed ones' objects
// before removing their journals, so even a crash right after it (no final
// checkpoint) finds every sidecar up to date.
func TestCheckpointFailure(t *testing.T) {
	dir := t.TempDir()
	var fs faultSwitch
	opt := quietOpts()
	opt.Fault = fs.hook
	opt.FlushInterval = -1
	opt.JournalLimit = 32 << 10
	s := openT(t, dir, opt)
	m := model{}
	ver := uint64(0)
	write := func(oid uint64, off int64, n int) {
		t.Helper()
		ver++
		meta := ObjectMeta{Version: ver, ReqID: oid}
		data := pattern(ver, n)
		must(t, s.Write(oid, meta, off, data, false))
		m.write(oid, meta, off, data)
	}
	fs.set(FaultCheckpoint, syscall.EIO)
	for i := range 40 {
		write(uint64(i%8), int64(i)*1000, 3000)
		must(t, s.Sync()) // rotates once past JournalLimit
	}
	must(t, s.quiesce())
	waitFor(t, "a failed checkpoint", func() bool { return fs.hits.Load() > 0 })
	if n := journalFiles(t, dir); n < 2 {
		t.Fatalf("%d journal files with failing checkpoints; want the sealed ones kept", n)
	}
	checkModel(t, s, m)

	// Recovery: objects 8.. are new, 0..7 only in the failed checkpoints.
	fs.set(0, nil)
	for i := range 12 {
		write(uint64(8+i%3), int64(i)*ChunkSize, ChunkSize)
		must(t, s.Sync())
	}
	must(t, s.quiesce())
	waitFor(t, "the carried-over checkpoint", func() bool { return journalFiles(t, dir) == 1 })
	checkModel(t, s, m)
	s.crash()
	s = openT(t, dir, opt)
	checkModel(t, s, m)

	// A failing final checkpoint keeps the journal for the next Open.
	write(20, 0, 5000)
	fs.set(FaultCheckpoint, syscall.EIO)
	if err := s.Close(); !errors.Is(err, syscall.EIO) {
		t.Fatalf("Close with a failing checkpoint = %v, want EIO", err)
	}
	if journalFiles(t, dir) == 0 {
		t.Fatal("journal removed although the final checkpoint failed")
	}
	fs.set(0, nil)
	s = openT(t, dir, opt)
	checkModel(t, s, m)
	closeT(t, s)
	if n := journalFiles(t, dir); n != 0 {
		t.Fatalf("%d journal files after Close", n)
	}
}

// TestDirtyTableBound: small writes to many different 4 MiB regions dirty
// a checksum page each; once the pages dirtied since the last rotation
// pass maxDirty, the journal rotates (long before JournalLimit) and the
// checkpoint writes them out, after which the tables of objects without
// cached descriptors are dropped.
func TestDirtyTableBound(t *testing.T) {
	dir := t.TempDir()
	opt := quietOpts()
	opt.FlushInterval = -1
	opt.MaxOpenFiles = 2
	s := openT(t, dir, opt)
	s.maxDirty = 4 * pageBytes
	m := model{}
	const objects, regions = 6, 3
	seq0 := s.jseq
	for i := range objects * regions {
		oid, off := uint64(i%objects), int64(i/objects)*pageSlots*ChunkSize+int64(i)
		meta := ObjectMeta{Version: uint64(i + 1)}
		must(t, s.Write(oid, meta, off, []byte{byte(i), 1}, false))
		m.write(oid, meta, off, []byte{byte(i), 1})
		if i%4 == 3 {
			must(t, s.quiesce()) // apply, so that the next commit sees the pages
		}
	}
	must(t, s.quiesce())
	s.jmu.Lock()
	seq := s.jseq
	s.jmu.Unlock()
	if seq == seq0 {
		t.Fatalf("journal never rotated with %d dirty table pages", objects*regions)
	}
	waitFor(t, "checkpoints", func() bool { return journalFiles(t, dir) == 1 })
	// Whatever the last rotation left dirty is at most maxDirty; clean
	// tables survive only with cached descriptors.
	loaded := 0
	for i := range s.shards {
		sh := &s.shards[i]
		sh.mu.RLock()
		for _, o := range sh.m {
			o.mu.Lock()
			for _, pg := range o.pages {
				if pg != nil {
					loaded++
				}
			}
			o.mu.Unlock()
		}
		sh.mu.RUnlock()
	}
	if max := int(s.maxDirty/pageBytes) + opt.MaxOpenFiles*regions + regions; loaded > max {
		t.Fatalf("%d checksum pages in memory, want at most %d", loaded, max)
	}
	checkModel(t, s, m)
	s.crash()
	s = openT(t, dir, opt)
	checkModel(t, s, m)
	closeT(t, s)
}
