package main

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/sheepdog-go/sheepdog/core"
	"github.com/sheepdog-go/sheepdog/internal/freeport"
)

// Endurance and disk-fault tests of real processes (issue 12): kill -9
// loops during verifying fio writes, disks replaced with empty ones, a
// full disk, and corrupted object files and journals on a stopped node.
// Each checks through real NBD clients that nothing acknowledged is lost,
// that `vdi check` finds every replica present and identical afterwards
// and that no node ever panicked.

const mib = 1 << 20

// TestE2EKillNineEndurance: ENDURANCE_ROUNDS rounds (default 5; `make
// endurance` runs 50) of kill -9 of a random node of a 3-node copies=3
// cluster while fio writes with crc32c verify headers and flushes every
// 16 writes through another node, restart, wait for the node to rejoin.
// Each round's fio job verifies its region at its end; after the last
// round and recovery every region is read back and verified again
// through a different node than wrote it, and `vdi check` is clean.
// ENDURANCE_SEED replays a run's choice of victims and timings.
func TestE2EKillNineEndurance(t *testing.T) {
	needTools(t, "fio")
	rounds := envInt(t, "ENDURANCE_ROUNDS", 5)
	rng := rand.New(rand.NewPCG(envSeed(t, "ENDURANCE_SEED"), 12))
	const (
		n        = 3
		copies   = 3
		regionSz = 8 * mib
	)
	c := startProcCluster(t, n)
	c.format(copies)
	// A region of its own for every round: fio's verify headers carry
	// the block's offset and checksum, not which job wrote it, so a lost
	// overwrite of an earlier round's block would pass as intact. Each
	// block is written once, and a lost write reads as zeros.
	c.mustAdmin("vdi", "create", "endure", fmt.Sprint(max(rounds, 1)*regionSz))

	// done[k] is round k's job and the node it went through.
	type written struct {
		r    fioRegion
		node int
	}
	var done []written
	start := time.Now()
	for round := 0; round < rounds; round++ {
		victim := rng.IntN(n)
		via := (victim + 1 + rng.IntN(n-1)) % n
		reg := fioRegion{off: int64(round) * regionSz, size: regionSz, seed: uint64(round + 1)}
		c.waitDetachedAt(via, "endure")
		before := c.epochAt(via)
		// 2048 writes at 1000 IOPS: about 2 s, so the kill and most of
		// the restart fall inside the job.
		fio := startBg(t, "fio", reg.args(c.nbdURI(via, "endure"), false, 1000)...)
		time.Sleep(time.Duration(200+rng.IntN(1000)) * time.Millisecond)
		_ = c.kill(victim, syscall.SIGKILL)
		time.Sleep(time.Duration(rng.IntN(800)) * time.Millisecond)
		c.start(victim)
		c.waitServingAt(via, before, n, 60*time.Second)
		out, err := fio.wait(3 * time.Minute)
		fioOK(t, fmt.Sprintf("round %d (victim node %d, through node %d)", round, victim, via), out, err)
		done = append(done, written{reg, via})
		t.Logf("round %d: killed node %d during fio through node %d (%v)", round, victim, via, time.Since(start).Round(time.Millisecond))
	}
	c.waitRecoveredAt(0, n, 2*time.Minute)
	for k, w := range done {
		reader := (w.node + 1) % n
		c.waitDetachedAt(reader, "endure")
		out, err := runToolCtx(3*time.Minute, "fio", w.r.args(c.nbdURI(reader, "endure"), true, 0)...)
		fioOK(t, fmt.Sprintf("verify of region %d through node %d", k, reader), out, err)
	}
	cr := c.checkVDIAt(0, "endure", copies)
	if want := 2 * rounds; cr.Allocated < want {
		t.Fatalf("vdi check: %d objects allocated, want at least %d: %+v", cr.Allocated, want, cr)
	}
	c.checkNoPanics()
}

// TestE2EDiskReplace: REPLACE_ROUNDS times (default 10, about 4 s each;
// `make endurance` runs 20), during fio
// writes through another node, a random node of a 3-node copies=2
// cluster is killed, its data directory emptied (a new disk) and the node
// started again, joining through a live member: at its old --listen
// address on some rounds, at a new one on others. Each round it must come
// back as a member, recovery must refill it (it holds objects again, `vdi
// check` is clean) and fio's verify must pass; at the end an image written
// before the first round compares identical through every node, every
// round's region verifies again, and no process ever panicked.
// REPLACE_SEED replays a run.
func TestE2EDiskReplace(t *testing.T) {
	needTools(t, "fio", "qemu-img")
	rounds := envInt(t, "REPLACE_ROUNDS", 10)
	rng := rand.New(rand.NewPCG(envSeed(t, "REPLACE_SEED"), 34))
	const (
		n        = 3
		copies   = 2
		imgSz    = 16 * mib
		regionSz = 4 * mib
	)
	c := startProcCluster(t, n)
	c.format(copies)
	c.mustAdmin("vdi", "create", "disk", fmt.Sprint(imgSz+max(rounds, 1)*regionSz))
	img := randomFile(t, imgSz)
	runTool(t, 2*time.Minute, "qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", img, c.nbdURI(0, "disk"))

	type written struct {
		r    fioRegion
		node int
	}
	var done []written
	start := time.Now()
	for round := 0; round < rounds; round++ {
		victim := rng.IntN(n)
		via := (victim + 1 + rng.IntN(n-1)) % n
		newAddr := rng.IntN(2) == 0
		reg := fioRegion{off: imgSz + int64(round)*regionSz, size: regionSz, seed: uint64(round + 1)}
		what := fmt.Sprintf("round %d (node %d replaced, new address %v, fio through node %d)", round, victim, newAddr, via)
		c.waitDetachedAt(via, "disk")
		before := c.epochAt(via)
		// 1024 writes at 500 IOPS: about 2 s.
		fio := startBg(t, "fio", reg.args(c.nbdURI(via, "disk"), false, 500)...)
		time.Sleep(time.Duration(200+rng.IntN(800)) * time.Millisecond)
		_ = c.kill(victim, syscall.SIGKILL)
		p := c.nodes[victim]
		emptyDir(t, p.dir)
		if newAddr {
			p.listen, p.nbd = freeport.Addr(t), freeport.Addr(t)
		}
		p.join = c.nodes[via].listen
		c.start(victim)
		c.waitServingAt(via, before, n, 60*time.Second)
		out, err := fio.wait(3 * time.Minute)
		fioOK(t, what, out, err)
		done = append(done, written{reg, via})
		c.waitRecoveredAt(via, n, 2*time.Minute)
		rows, _ := c.statusesAt(via)
		for _, r := range rows {
			if r.Addr == p.listen && r.Objects == 0 {
				t.Fatalf("%s: recovered, but the new disk holds no object: %+v", what, r)
			}
		}
		c.checkVDIAt(via, "disk", copies)
		t.Logf("%s: refilled (%v)", what, time.Since(start).Round(time.Millisecond))
	}
	for i := range c.nodes {
		c.waitDetachedAt(i, "disk")
		c.comparePrefix(img, i, "disk", imgSz)
	}
	for k, w := range done {
		reader := (w.node + 1 + k%(n-1)) % n
		c.waitDetachedAt(reader, "disk")
		out, err := runToolCtx(3*time.Minute, "fio", w.r.args(c.nbdURI(reader, "disk"), true, 0)...)
		fioOK(t, fmt.Sprintf("verify of round %d's region through node %d", k, reader), out, err)
	}
	c.checkVDIAt(0, "disk", copies)
	c.checkNoPanics()
}

// qemuIOWrites runs qemu-io through uri with one `write -P pattern off len`
// per write and a flush at the end, and reports each write's outcome in
// order: "" when it was acknowledged, else qemu-io's error message. A
// client still running after a minute is killed and fails the test.
func qemuIOWrites(t *testing.T, uri string, writes []patWrite) []string {
	t.Helper()
	args := []string{"-f", "raw", uri}
	for _, w := range writes {
		args = append(args, "-c", fmt.Sprintf("write -P %#x %d %d", w.pat, w.off, w.len))
	}
	args = append(args, "-c", "flush")
	t0 := time.Now()
	out, err := runToolCtx(time.Minute, "qemu-io", args...)
	if time.Since(t0) >= time.Minute {
		t.Fatalf("qemu-io %s %v: hung for a minute (killed: %v):\n%s", uri, writes, err, out)
	}
	var res []string
	for _, l := range strings.Split(out, "\n") {
		switch {
		case strings.HasPrefix(l, "wrote "):
			res = append(res, "")
		case strings.HasPrefix(l, "write failed: "):
			res = append(res, strings.TrimPrefix(l, "write failed: "))
		}
	}
	if len(res) != len(writes) {
		t.Fatalf("qemu-io %s: %d outcomes for %d writes:\n%s", uri, len(res), len(writes), out)
	}
	return res
}

// patWrite is a write of len bytes of pattern pat at off.
type patWrite struct {
	off, len int64
	pat      byte
}

// readPatterns reads every write back through uri with qemu-io and fails
// unless each range holds its pattern.
func readPatterns(t *testing.T, what, uri string, writes []patWrite) {
	t.Helper()
	if len(writes) == 0 {
		return
	}
	args := []string{"-f", "raw", uri}
	for _, w := range writes {
		args = append(args, "-c", fmt.Sprintf("read -P %#x %d %d", w.pat, w.off, w.len))
	}
	out, err := runToolCtx(3*time.Minute, "qemu-io", args...)
	if err != nil || strings.Contains(out, "fail") || strings.Count(out, "read ") != len(writes) {
		t.Fatalf("%s: reading back %d acknowledged writes through %s: %v\n%s", what, len(writes), uri, err, out)
	}
}

// fillFS writes a file at path until its filesystem is full.
func fillFS(t *testing.T, path string) int64 {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := bytes.Repeat([]byte{0xee}, 64<<10)
	var n int64
	for {
		k, err := f.Write(buf)
		n += int64(k)
		if errors.Is(err, syscall.ENOSPC) {
			return n
		}
		if err != nil {
			t.Fatal(err)
		}
	}
}

// TestE2EFullDisk: node 2 of a 3-node copies=3 cluster keeps its data
// directory on a 64 MiB tmpfs, which a filler file then fills. Writes
// through node 0, each of which needs node 2, go on until one fails with
// ENOSPC (what the node's full disk maps to in NBD); every write
// acknowledged before or meanwhile reads back intact, node 2 keeps
// running; once the filler is removed writes succeed again, everything
// reads back through node 2 itself, and `vdi check` is clean.
func TestE2EFullDisk(t *testing.T) {
	needTools(t, "qemu-io")
	const copies = 3
	c := newProcCluster(t, 3, func(i int, dir string) {
		if i != 2 {
			return
		}
		if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", dir).CombinedOutput(); err != nil {
			t.Fatalf("mount tmpfs on %s (the test needs root): %v %s", dir, err, out)
		}
		t.Cleanup(func() {
			if out, err := exec.Command("umount", "-l", dir).CombinedOutput(); err != nil {
				t.Errorf("umount %s: %v %s", dir, err, out)
			}
		})
	})
	c.format(copies)
	c.mustAdmin("vdi", "create", "full", "256M")
	before := []patWrite{{0, 4 * mib, 0xa1}, {5 * mib, 1 * mib, 0xa2}}
	if res := qemuIOWrites(t, c.nbdURI(0, "full"), before); slices.ContainsFunc(res, func(s string) bool { return s != "" }) {
		t.Fatalf("writes before the disk filled up: %q", res)
	}

	filler := filepath.Join(c.nodes[2].dir, "filler")
	t.Logf("filler: %d MiB", fillFS(t, filler)>>20)
	// 1 MiB writes, one client each, into two objects: the journal's
	// preallocated space takes a few, then each must fail with ENOSPC (not
	// hang, nor fail otherwise), or go on once the cluster has taken node
	// 2 out. No more than 8 MiB, so that everything still fits on node 2
	// once the filler is gone (copies=3 puts every object there, and
	// recovery writes whole objects through the journal).
	var acked, failed []patWrite
	for k := int64(0); k < 8 && len(failed) < 4; k++ {
		w := patWrite{off: 16*mib + k*mib, len: mib, pat: byte(0x10 + k)}
		c.waitDetachedAt(0, "full")
		r := qemuIOWrites(t, c.nbdURI(0, "full"), []patWrite{w})[0]
		if r == "" {
			acked = append(acked, w)
			continue
		}
		if !strings.Contains(r, "No space left on device") {
			t.Errorf("write %d at %d MiB (%d failed before it) on a full disk: %q, want ENOSPC", k, w.off/mib, len(failed), r)
		}
		failed = append(failed, w)
	}
	t.Logf("on the full disk: %d writes acknowledged, then %d failed", len(acked), len(failed))
	if n := len(c.statusesMust(0)); len(failed) == 0 && n == 3 {
		t.Error("8 MiB written to a cluster with a full disk on a node every object needs, the node still a member, and no write failed")
	}
	// A full disk must not stop the node: it must refuse what it cannot
	// store and serve again once space is freed. If it stopped anyway,
	// say so and go on, restarted, with the checks of the data.
	stopped, err := c.exited(2)
	if stopped {
		t.Errorf("node 2 stopped on a full disk (%v); it should refuse writes with ENOSPC and stay up; its log:\n%s", err, c.logTail(2, 8))
	}
	readPatterns(t, "full disk", c.nbdURI(1, "full"), append(slices.Clone(before), acked...))

	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	if stopped {
		c.start(2)
		c.waitMembers(3)
	}
	if len(failed) == 0 {
		failed = []patWrite{{off: 8 * mib, len: mib, pat: 0x77}}
	}
	// The node retries what it could not apply; new writes succeed once
	// it has.
	retry := failed[:1]
	c.waitFor("a write to succeed after space was freed", 60*time.Second, func() bool {
		c.waitDetachedAt(0, "full")
		return qemuIOWrites(t, c.nbdURI(0, "full"), retry)[0] == ""
	})
	c.waitDetachedAt(0, "full")
	if res := qemuIOWrites(t, c.nbdURI(0, "full"), failed); slices.ContainsFunc(res, func(s string) bool { return s != "" }) {
		t.Fatalf("writes after space was freed: %q", res)
	}
	c.waitRecoveredAt(0, 3, 2*time.Minute)
	all := append(append(slices.Clone(before), acked...), failed...)
	readPatterns(t, "space freed", c.nbdURI(2, "full"), all)
	c.checkVDIAt(0, "full", copies)
	c.checkNoPanics()
}

// dataObjects lists the data objects of a node's data directory that
// have both their data file and their sidecar, in OID order.
func dataObjects(t *testing.T, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(filepath.Join(dir, "obj"))
	if err != nil {
		t.Fatal(err)
	}
	var oids []string
	for _, e := range ents {
		v, err := strconv.ParseUint(e.Name(), 16, 64)
		if err != nil || len(e.Name()) != 16 || !core.OID(v).IsData() {
			continue
		}
		if _, err := os.Stat(filepath.Join(dir, "obj", e.Name()+".meta")); err == nil {
			oids = append(oids, e.Name())
		}
	}
	slices.Sort(oids)
	return oids
}

// dataChunk is the index of the first 4 KiB chunk of an object file that
// holds anything but zeros.
func dataChunk(t *testing.T, path string) int64 {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	for off := 0; off < len(b); off += 4096 {
		if slices.ContainsFunc(b[off:min(off+4096, len(b))], func(x byte) bool { return x != 0 }) {
			return int64(off / 4096)
		}
	}
	t.Fatalf("%s holds only zeros", path)
	return 0
}

// flipByte inverts the bits of the byte at off in the file at path.
func flipByte(t *testing.T, path string, off int64) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, 1)
	if _, err := f.ReadAt(b, off); err != nil {
		t.Fatalf("%s at %d: %v", path, off, err)
	}
	b[0] ^= 0xff
	if _, err := f.WriteAt(b, off); err != nil {
		t.Fatal(err)
	}
}

// damageObjects damages four data objects of a stopped node: bits
// flipped in the data of one, in a checksum of its sidecar for another
// (both where the object holds data), the data file of a third deleted,
// the sidecar header of a fourth made unreadable.
func damageObjects(t *testing.T, dir string) []string {
	t.Helper()
	oids := dataObjects(t, dir)
	if len(oids) < 4 {
		t.Fatalf("node has %d data objects, the test needs 4: %v", len(oids), oids)
	}
	obj := func(k int) string { return filepath.Join(dir, "obj", oids[k]) }
	const metaHdr = 64 // disk/doc.go: the sidecar's header, then one CRC32C per 4 KiB chunk
	ch0, ch1 := dataChunk(t, obj(0)), dataChunk(t, obj(1))
	flipByte(t, obj(0), ch0*4096+123)
	flipByte(t, obj(1)+".meta", metaHdr+4*ch1+1)
	if err := os.Remove(obj(2)); err != nil {
		t.Fatal(err)
	}
	flipByte(t, obj(3)+".meta", 9)
	return []string{
		fmt.Sprintf("data of %s flipped in chunk %d", oids[0], ch0),
		fmt.Sprintf("sidecar checksum of %s chunk %d flipped", oids[1], ch1),
		fmt.Sprintf("data file of %s deleted", oids[2]),
		fmt.Sprintf("sidecar header of %s flipped", oids[3]),
	}
}

// cutJournal cuts the newest journal file of a killed node in the middle
// of what it holds (the journal is preallocated: what it holds ends at
// its last non-zero byte), as a disk that lost the tail of its writes.
func cutJournal(t *testing.T, dir string) []string {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(dir, "journal", "*"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no journal file in %s: %v", dir, err)
	}
	slices.Sort(files)
	path := files[len(files)-1]
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	end := len(b)
	for end > 0 && b[end-1] == 0 {
		end--
	}
	const hdr = 32 // disk/doc.go: a journal file's header
	if end < hdr+1<<20 {
		t.Fatalf("journal %s holds %d bytes: too little to cut (were the writes checkpointed?)", path, end)
	}
	cut := hdr + (end-hdr)/2
	if err := os.Truncate(path, int64(cut)); err != nil {
		t.Fatal(err)
	}
	return []string{fmt.Sprintf("journal %s cut from %d to %d bytes", filepath.Base(path), end, cut)}
}

// objectDigests is the SHA-256 of every data object file a node keeps.
func objectDigests(t *testing.T, dir string) map[string]string {
	t.Helper()
	m := map[string]string{}
	for _, oid := range dataObjects(t, dir) {
		b, err := os.ReadFile(filepath.Join(dir, "obj", oid))
		if err != nil {
			t.Fatal(err)
		}
		m[oid] = fmt.Sprintf("%x", sha256.Sum256(b))
	}
	return m
}

// TestE2ECorruptStoppedNode: node 2 of a 3-node copies=3 cluster is
// stopped and its disk damaged: bits flipped in object data and in
// sidecars, an object file deleted (after SIGTERM), or the journal's tail
// cut (after kill -9 right after flushed writes, so its replicas are
// older than the others'). Restarted, reads through NBD, through node 2
// itself and through another node, return what was written (checksums
// catch the damage, another replica repairs it); once recovered, `vdi
// check` is clean, a second check repairs nothing, every node's copy of
// every object is byte-identical and no node panicked.
func TestE2ECorruptStoppedNode(t *testing.T) {
	needTools(t, "qemu-img", "qemu-io")
	tests := []struct {
		name   string
		sig    syscall.Signal
		damage func(t *testing.T, dir string) []string
	}{
		{"flipped bits and a deleted object after SIGTERM", syscall.SIGTERM, damageObjects},
		{"journal tail cut after kill -9", syscall.SIGKILL, cutJournal},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			const (
				copies = 3
				size   = 24 * mib
			)
			c := startProcCluster(t, 3)
			c.format(copies)
			c.mustAdmin("vdi", "create", "c", fmt.Sprint(size))
			img := randomFile(t, size)
			runTool(t, 2*time.Minute, "qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", img, c.nbdURI(0, "c"))
			// Overwrites, flushed: in the journal of every node.
			want, err := os.ReadFile(img)
			if err != nil {
				t.Fatal(err)
			}
			c.waitDetachedAt(0, "c")
			runTool(t, time.Minute, "qemu-io", "-f", "raw", c.nbdURI(0, "c"), "-c", "write -P 0x5c 2M 3M", "-c", "write -P 0xc5 13M 6M", "-c", "flush")
			copy(want[2*mib:5*mib], bytes.Repeat([]byte{0x5c}, 3*mib))
			copy(want[13*mib:19*mib], bytes.Repeat([]byte{0xc5}, 6*mib))
			if err := os.WriteFile(img, want, 0o644); err != nil {
				t.Fatal(err)
			}

			before := c.epochAt(0)
			_ = c.kill(2, tt.sig)
			for _, d := range tt.damage(t, c.nodes[2].dir) {
				t.Log(d)
			}
			c.start(2)
			c.waitServingAt(0, before, 3, 60*time.Second)
			c.waitDetachedAt(2, "c")
			c.compareImage(img, c.nbdURI(2, "c"))
			c.waitDetachedAt(1, "c")
			c.compareImage(img, c.nbdURI(1, "c"))

			c.waitRecoveredAt(0, 3, 2*time.Minute)
			cr := c.checkVDIAt(0, "c", copies)
			t.Logf("vdi check after recovery: %d objects, %d repaired", cr.Allocated, cr.Repaired)
			if cr := c.checkVDIAt(1, "c", copies); cr.Repaired != 0 {
				t.Errorf("a second vdi check repaired %d objects: %+v", cr.Repaired, cr)
			}
			// The applier may still be writing what recovery fetched.
			for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(200 * time.Millisecond) {
				ref := objectDigests(t, c.nodes[0].dir)
				var diffs []string
				if len(ref) != cr.Allocated {
					diffs = append(diffs, fmt.Sprintf("node 0 keeps %d data objects, vdi check counts %d", len(ref), cr.Allocated))
				}
				for i := 1; i < 3; i++ {
					if d := cmp.Diff(ref, objectDigests(t, c.nodes[i].dir)); d != "" {
						diffs = append(diffs, fmt.Sprintf("SHA-256 of the object files, node 0 vs node %d (-0 +%d):\n%s", i, i, d))
					}
				}
				if len(diffs) == 0 {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("replicas still differ 30s after vdi check:\n%s", strings.Join(diffs, "\n"))
				}
			}
			c.compareImage(img, c.nbdURI(0, "c"))
			c.checkNoPanics()
		})
	}
}
