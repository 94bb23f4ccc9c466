package disk

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"go.etcd.io/raft/v3/raftpb"
)

// TestFullFilesystemKeepsTheClusterLog: on a filesystem that fills up,
// object writes fail with ErrNoSpace, but the cluster log still takes
// entries (the reserve gives it room), nothing written before is lost,
// and object writes work again once space is freed. It needs a small
// filesystem of its own: a tmpfs, which needs root, as the end-to-end
// tests do.
func TestFullFilesystemKeepsTheClusterLog(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("this test mounts a tmpfs: run it as root")
	}
	dir := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", dir).CombinedOutput(); err != nil {
		t.Fatalf("mount tmpfs: %v %s", err, out)
	}
	t.Cleanup(func() { _ = exec.Command("umount", "-l", dir).Run() })
	s, err := Open(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	block := make([]byte, 1<<20)
	for i := range block {
		block[i] = 0x5a
	}
	if err := s.Write(1, ObjectMeta{Version: 1}, 0, block, true); err != nil {
		t.Fatal(err)
	}
	filler := filepath.Join(dir, "filler")
	f, err := os.Create(filler)
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := f.Write(block); err != nil {
			break
		}
	}
	f.Close()
	var werr error
	for oid := uint64(2); oid < 64 && werr == nil; oid++ {
		werr = s.Write(oid, ObjectMeta{Version: 1}, 0, block, true)
	}
	if !errors.Is(werr, ErrNoSpace) {
		t.Fatalf("object writes on a full filesystem: %v, want ErrNoSpace", werr)
	}
	// A MiB of cluster log: more than meta.db had room for.
	var last uint64
	for i := uint64(1); i <= 32; i++ {
		e := raftpb.Entry{Index: i, Term: 1, Data: make([]byte, 32<<10)}
		if err := s.SaveRaft(raftpb.HardState{Term: 1, Commit: i}, []raftpb.Entry{e}, raftpb.Snapshot{}); err != nil {
			t.Fatalf("saving raft entry %d on a full filesystem: %v", i, err)
		}
		last = i
	}
	if err := s.Write(100, ObjectMeta{Version: 1}, 0, block, true); !errors.Is(err, ErrNoSpace) {
		t.Fatalf("object write after the reserve was given up: %v, want ErrNoSpace", err)
	}
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := s.Write(100, ObjectMeta{Version: 1}, 0, block, true)
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("object writes still refused after space was freed: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	got := make([]byte, len(block))
	if _, err := s.Read(1, 0, got); err != nil || got[0] != 0x5a || got[len(got)-1] != 0x5a {
		t.Fatalf("object written before the disk filled up: %v", err)
	}
	rs, err := s.LoadRaft()
	if err != nil || len(rs.Entries) == 0 || rs.Entries[len(rs.Entries)-1].Index != last {
		t.Fatalf("raft log after the full filesystem: %v, %d entries", err, len(rs.Entries))
	}
}
