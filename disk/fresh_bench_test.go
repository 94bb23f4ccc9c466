package disk

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// The Fresh benchmarks write into objects never written before, as an
// import into or a VM's first writes to a thin VDI do; the Overwrite ones
// make the same writes over objects written once before the timer starts.

// benchWrite1MInto: sequential 1 MiB writes handed over (as the daemon
// does); the rate includes applying them (quiesce before the timer stops).
func benchWrite1MInto(b *testing.B, fresh bool) {
	s := openT(b, b.TempDir(), quietOpts())
	bufs := make([][]byte, 16)
	for i := range bufs {
		bufs[i] = pattern(uint64(i), 1<<20)
	}
	if !fresh {
		for i := range 4 * benchObjects {
			if err := s.WriteOwned(uint64(i/4), ObjectMeta{Version: 1}, int64(i%4)<<20, bufs[i%len(bufs)], false); err != nil {
				b.Fatal(err)
			}
		}
		if err := s.quiesce(); err != nil {
			b.Fatal(err)
		}
	}
	b.SetBytes(1 << 20)
	i := 0
	cpu := startCPU()
	for b.Loop() {
		oid := uint64(i / 4)
		if !fresh {
			oid %= benchObjects
		} else {
			oid += 1 << 20
		}
		if err := s.WriteOwned(oid, ObjectMeta{Version: uint64(i + 2)}, int64(i%4)<<20, bufs[i%len(bufs)], false); err != nil {
			b.Fatal(err)
		}
		i++
	}
	if err := s.quiesce(); err != nil {
		b.Fatal(err)
	}
	b.StopTimer()
	cpu.report(b)
	closeT(b, s)
}

func BenchmarkWrite1MFresh(b *testing.B)     { benchWrite1MInto(b, true) }
func BenchmarkWrite1MOverwrite(b *testing.B) { benchWrite1MInto(b, false) }

// benchWrite4KSyncInto: sync 4 KiB writes from one goroutine (QD1 with
// FUA), sequential through objects of perObj writes each.
func benchWrite4KSyncInto(b *testing.B, fresh bool, perObj int) {
	dir := b.TempDir()
	opt := quietOpts()
	opt.JournalLimit = 8 << 20
	s := openT(b, dir, opt)
	data := pattern(1, ChunkSize)
	if !fresh {
		for i := range benchObjects * perObj {
			if err := s.Write(uint64(i/perObj), ObjectMeta{Version: 1}, int64(i%perObj)*ChunkSize, data, false); err != nil {
				b.Fatal(err)
			}
		}
		if err := s.Sync(); err != nil {
			b.Fatal(err)
		}
		if err := s.quiesce(); err != nil {
			b.Fatal(err)
		}
	}
	// A node that has run for a while: its journal has rotated twice
	// and the rotated files (the prefill's records among them) are
	// checkpointed, so their data is synced before the timer starts.
	big := pattern(2, 1<<20)
	for i := range 20 {
		if err := s.Write(1<<40+uint64(i/4), ObjectMeta{Version: 1}, int64(i%4)<<20, big, i%4 == 3); err != nil {
			b.Fatal(err)
		}
	}
	if err := s.Sync(); err != nil {
		b.Fatal(err)
	}
	if err := s.quiesce(); err != nil {
		b.Fatal(err)
	}
	for deadline := time.Now().Add(time.Minute); liveJournals(b, dir) != 1; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			b.Fatal("the rotated journal was never checkpointed")
		}
	}
	b.SetBytes(ChunkSize)
	i := 0
	cpu := startCPU()
	for b.Loop() {
		oid := uint64(i / perObj)
		if !fresh {
			oid %= benchObjects
		} else {
			oid += 1 << 20
		}
		if err := s.Write(oid, ObjectMeta{Version: uint64(i + 2)}, int64(i%perObj)*ChunkSize, data, true); err != nil {
			b.Fatal(err)
		}
		i++
	}
	b.StopTimer()
	cpu.report(b)
	closeT(b, s)
}

// Sequential through 4 MiB objects: one new object per 1024 writes.
func BenchmarkWrite4KSyncSeqFresh(b *testing.B)     { benchWrite4KSyncInto(b, true, 1024) }
func BenchmarkWrite4KSyncSeqOverwrite(b *testing.B) { benchWrite4KSyncInto(b, false, 1024) }

// One write per object: every write creates one (random writes into a
// large thin VDI), against one write into each of 64 existing objects.
func BenchmarkWrite4KSyncNewFresh(b *testing.B)     { benchWrite4KSyncInto(b, true, 1) }
func BenchmarkWrite4KSyncNewOverwrite(b *testing.B) { benchWrite4KSyncInto(b, false, 1) }

// liveJournals counts dir's journal files, spare ones left out.
func liveJournals(b *testing.B, dir string) int {
	ents, err := os.ReadDir(filepath.Join(dir, "journal"))
	if err != nil {
		b.Fatal(err)
	}
	n := 0
	for _, e := range ents {
		if !strings.HasPrefix(e.Name(), "spare-") {
			n++
		}
	}
	return n
}
