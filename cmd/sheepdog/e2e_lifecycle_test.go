package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/sheepdog-go/sheepdog/daemon"
)

// End-to-end tests of the VDI lifecycle: snapshots, clones, rollback,
// flatten and delete through the CLI, snapshots read through NBD by
// qemu-img and nbdinfo.

const nbdEPERM = 1

// mustRead is a VDI's (or with -s, a snapshot's) contents as `vdi read`
// gives them.
func (c *procCluster) mustRead(args ...string) []byte {
	c.t.Helper()
	return []byte(c.mustAdmin(append([]string{"vdi", "read"}, args...)...))
}

// mustFail runs a CLI command that must fail and returns its error text.
func (c *procCluster) mustFail(args ...string) string {
	c.t.Helper()
	out, err := c.admin(args...)
	if err == nil {
		c.t.Fatalf("sheepdog %s succeeded (%q), want an error", strings.Join(args, " "), out)
	}
	return err.Error()
}

func (c *procCluster) compareImage(img, uri string) {
	c.t.Helper()
	out := runTool(c.t, 2*time.Minute, "qemu-img", "compare", "-f", "raw", "-F", "raw", img, uri)
	if !strings.Contains(out, "Images are identical") {
		c.t.Fatalf("qemu-img compare %s %s: %s", img, uri, out)
	}
}

// dataRanges is what qemu-img map reports as data, merged into runs.
func dataRanges(t *testing.T, uri string) [][2]uint64 {
	t.Helper()
	var exts []struct {
		Start  uint64 `json:"start"`
		Length uint64 `json:"length"`
		Data   bool   `json:"data"`
	}
	out := runTool(t, time.Minute, "qemu-img", "map", "--output=json", "-f", "raw", uri)
	if err := json.Unmarshal([]byte(out), &exts); err != nil {
		t.Fatalf("qemu-img map %s: %v\n%s", uri, err, out)
	}
	var runs [][2]uint64
	for _, e := range exts {
		if !e.Data {
			continue
		}
		if k := len(runs) - 1; k >= 0 && runs[k][1] == e.Start {
			runs[k][1] += e.Length
		} else {
			runs = append(runs, [2]uint64{e.Start, e.Start + e.Length})
		}
	}
	return runs
}

func (c *procCluster) vdiRows() []daemon.VDIRow {
	c.t.Helper()
	var rows []daemon.VDIRow
	if err := json.Unmarshal([]byte(c.mustAdmin("vdi", "list", "--json")), &rows); err != nil {
		c.t.Fatal(err)
	}
	return rows
}

// objectFiles lists the object files (data and sidecars) every node keeps.
func (c *procCluster) objectFiles() []string {
	var files []string
	for i, p := range c.nodes {
		ents, _ := os.ReadDir(filepath.Join(p.dir, "obj"))
		for _, e := range ents {
			files = append(files, filepath.Join("n"+string(rune('0'+i)), e.Name()))
		}
	}
	return files
}

// startKilled starts cmd, to be killed when the test ends however it ends.
func startKilled(t *testing.T, cmd *exec.Cmd) {
	t.Helper()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
		}
	})
}

// TestE2ESnapshotCloneRollbackDelete walks a VDI through its lifecycle
// with real clients: import, snapshot, overwrite, the snapshot read back
// (by tag and by id, through another node, read-only), a clone written
// copy-on-write, rollback, flatten, deleting a snapshot others depend on,
// and deleting everything until no node keeps an object file.
func TestE2ESnapshotCloneRollbackDelete(t *testing.T) {
	needTools(t, "qemu-img", "qemu-io", "nbdinfo")
	const M = 1 << 20
	c := startProcCluster(t, 3)
	c.format(2)
	c.mustAdmin("vdi", "create", "vm", "32M")
	imgA := randomFile(t, 32*M)
	a, err := os.ReadFile(imgA)
	if err != nil {
		t.Fatal(err)
	}
	runTool(t, 2*time.Minute, "qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", imgA, c.nbdURI(0, "vm"))

	// Snapshot: its id is printed; a tag in use and a numeric tag are refused.
	if out := strings.TrimSpace(c.mustAdmin("vdi", "snapshot", "-s", "base", "vm")); out != "1" {
		t.Fatalf("vdi snapshot printed %q, want the snapshot id 1", out)
	}
	if msg := c.mustFail("vdi", "snapshot", "-s", "base", "vm"); !strings.Contains(msg, "already") {
		t.Errorf("a tag in use: %s", msg)
	}
	c.mustFail("vdi", "snapshot", "-s", "42", "vm")

	// The working VDI moves on; the snapshot keeps A, by tag and by id,
	// through another node.
	runTool(t, time.Minute, "qemu-io", "-f", "raw", c.nbdURI(1, "vm"), "-c", "write -P 0xb1 0 8M")
	c.compareImage(imgA, c.nbdURI(2, "vm@base"))
	c.compareImage(imgA, c.nbdURI(0, "vm@1"))
	if got := c.mustRead("-s", "base", "vm"); !bytes.Equal(got, a) {
		t.Fatalf("vdi read -s base vm: %d bytes, not image A", len(got))
	}
	b := bytes.Clone(a)
	copy(b, bytes.Repeat([]byte{0xb1}, 8*M))
	if got := c.mustRead("vm"); !bytes.Equal(got, b) {
		t.Fatal("vdi read vm: not A overwritten with B")
	}
	imgB := filepath.Join(t.TempDir(), "b")
	if err := os.WriteFile(imgB, b, 0o644); err != nil {
		t.Fatal(err)
	}
	c.compareImage(imgB, c.nbdURI(2, "vm"))

	// A snapshot export is read-only: flagged so, writes, trims and zeroes
	// get EPERM, and it stays unchanged.
	var info struct {
		Exports []map[string]any `json:"exports"`
	}
	if err := json.Unmarshal([]byte(runTool(t, time.Minute, "nbdinfo", "--json", c.nbdURI(1, "vm@base"))), &info); err != nil || len(info.Exports) != 1 {
		t.Fatalf("nbdinfo: %v %+v", err, info)
	}
	if info.Exports[0]["is_read_only"] != true {
		t.Errorf("nbdinfo vm@base: is_read_only = %v", info.Exports[0]["is_read_only"])
	}
	n := nbdDial(t, c.nodes[1].nbd, "vm@base")
	if n.flags&(1<<1) == 0 {
		t.Errorf("vm@base transmission flags %#x lack NBD_FLAG_READ_ONLY", n.flags)
	}
	for i, cmd := range []struct {
		typ  uint16
		data []byte
	}{{nbdCmdWrite, []byte("xxxx")}, {4 /* trim */, nil}, {6 /* write zeroes */, nil}} {
		length := uint32(4)
		if cmd.data == nil {
			length = 1 << 20
		}
		if err := n.request(nbdRequestMagic, cmd.typ, uint64(i+1), 0, length, cmd.data); err != nil {
			t.Fatal(err)
		}
		if errno, _, _, err := n.reply(0); err != nil || errno != nbdEPERM {
			t.Errorf("command %d on a snapshot: errno %d err %v, want EPERM", cmd.typ, errno, err)
		}
	}
	n.c.Close()
	c.compareImage(imgA, c.nbdURI(0, "vm@base"))
	c.mustFail("vdi", "read", "-s", "nosuch", "vm")

	// Clone: reads as the snapshot, block status says inherited data is
	// data, and its writes are its own.
	c.mustAdmin("vdi", "clone", "-s", "base", "vm", "cl")
	c.compareImage(imgA, c.nbdURI(2, "cl"))
	snapMap := dataRanges(t, c.nbdURI(0, "vm@base"))
	if len(snapMap) == 0 {
		t.Fatal("qemu-img map: the snapshot has no data")
	}
	if diff := cmp.Diff(snapMap, dataRanges(t, c.nbdURI(1, "cl"))); diff != "" {
		t.Errorf("a fresh clone's data ranges differ from its snapshot's (-snapshot +clone):\n%s", diff)
	}
	runTool(t, time.Minute, "qemu-io", "-f", "raw", c.nbdURI(0, "cl"), "-c", "write -P 0xc1 4M 64k")
	cl := bytes.Clone(a)
	copy(cl[4*M:], bytes.Repeat([]byte{0xc1}, 64<<10))
	if got := c.mustRead("cl"); !bytes.Equal(got, cl) {
		t.Fatal("vdi read cl: not A with the clone's write")
	}
	c.compareImage(imgA, c.nbdURI(1, "vm@base"))

	// A second snapshot, of B; then rollback: refused while attached,
	// then vm reads as A again, and mid stays (the tree branches at base).
	if out := strings.TrimSpace(c.mustAdmin("vdi", "snapshot", "-s", "mid", "vm")); out != "2" {
		t.Fatalf("second snapshot id %q", out)
	}
	hold := exec.Command("qemu-io", "-f", "raw", c.nbdURI(0, "vm"), "-c", "sleep 3000")
	startKilled(t, hold)
	c.waitFor("vm attached", 30*time.Second, func() bool {
		for _, r := range c.vdiRows() {
			if r.Name == "vm" && !r.Snapshot && r.Attached != "" {
				return true
			}
		}
		return false
	})
	c.mustFail("vdi", "rollback", "-s", "base", "vm")
	_ = hold.Process.Kill()
	_ = hold.Wait()
	c.waitFor("vm detached", 30*time.Second, func() bool {
		_, err := c.admin("vdi", "rollback", "-s", "base", "vm")
		return err == nil
	})
	if got := c.mustRead("vm"); !bytes.Equal(got, a) {
		t.Fatal("vdi read vm after rollback: not image A")
	}

	// A third snapshot after the rollback.
	runTool(t, time.Minute, "qemu-io", "-f", "raw", c.nbdURI(2, "vm"), "-c", "write -P 0xd1 16M 4M")
	if out := strings.TrimSpace(c.mustAdmin("vdi", "snapshot", "-s", "two", "vm")); out != "3" {
		t.Fatalf("third snapshot id %q", out)
	}
	lines := strings.Split(strings.TrimSuffix(c.mustAdmin("vdi", "tree"), "\n"), "\n")
	stamp := `\[\d{4}-\d\d-\d\d \d\d:\d\d\]`
	treeRE := []*regexp.Regexp{
		regexp.MustCompile(`^cl---\(you are here\)$`),
		regexp.MustCompile(`^vm---` + stamp + `-\+-` + stamp + `$`),
		regexp.MustCompile(`^ {24}` + "`" + `-` + stamp + `---\(you are here\)$`),
	}
	if len(lines) == 3 && !strings.HasPrefix(lines[0], "cl") { // trees in VDI id order
		lines = append(lines[2:], lines[:2]...)
	}
	if len(lines) != 3 || !treeRE[0].MatchString(lines[0]) || !treeRE[1].MatchString(lines[1]) || !treeRE[2].MatchString(lines[2]) {
		t.Errorf("vdi tree:\n%s", strings.Join(lines, "\n"))
	}
	list := c.mustAdmin("vdi", "list")
	for _, want := range []string{"s vm ", " base ", " mid ", " two ", "c cl ", "  vm "} {
		if !strings.Contains(list, want) {
			t.Errorf("vdi list lacks %q:\n%s", want, list)
		}
	}
	for _, r := range c.vdiRows() {
		if r.Name == "cl" && (r.Used != 4*M || r.Shared != 28*M) {
			t.Errorf("clone cl: used %d shared %d, want one own object and seven shared", r.Used, r.Shared)
		}
	}

	// A clone of a clone: snapshot the clone, clone that.
	c.mustAdmin("vdi", "snapshot", "-s", "cs", "cl")
	c.mustAdmin("vdi", "clone", "-s", "cs", "cl", "cl2")
	runTool(t, time.Minute, "qemu-io", "-f", "raw", c.nbdURI(1, "cl2"), "-c", "write -P 0xe1 0 4k")
	cl2 := bytes.Clone(cl)
	copy(cl2, bytes.Repeat([]byte{0xe1}, 4096))
	if got := c.mustRead("cl2"); !bytes.Equal(got, cl2) {
		t.Fatal("vdi read cl2 (a clone of a clone): wrong data")
	}
	if got := c.mustRead("cl"); !bytes.Equal(got, cl) {
		t.Fatal("vdi read cl after its clone wrote: changed")
	}

	// Flatten: the clone shares nothing any more and still reads the same.
	c.mustAdmin("vdi", "flatten", "cl")
	for _, r := range c.vdiRows() {
		if r.Name == "cl" && !r.Snapshot && r.Shared != 0 {
			t.Errorf("cl after flatten: %+v", r)
		}
	}
	if got := c.mustRead("cl"); !bytes.Equal(got, cl) {
		t.Fatal("vdi read cl after flatten: changed")
	}

	// Deleting a snapshot others depend on keeps their data readable;
	// deleting what does not exist fails.
	c.mustAdmin("vdi", "delete", "-s", "base", "vm")
	c.mustFail("vdi", "delete", "-s", "base", "vm")
	c.mustFail("vdi", "delete", "nosuch")
	if out, err := exec.Command("qemu-img", "info", c.nbdURI(1, "vm@1")).CombinedOutput(); err == nil {
		t.Errorf("deleted snapshot vm@1 still exported:\n%s", out)
	}
	two := bytes.Clone(a)
	copy(two[16*M:], bytes.Repeat([]byte{0xd1}, 4*M))
	if got := c.mustRead("vm"); !bytes.Equal(got, two) {
		t.Fatal("vdi read vm after deleting the snapshot it was rolled back to: changed")
	}
	if got := c.mustRead("-s", "two", "vm"); !bytes.Equal(got, two) {
		t.Fatal("vdi read -s two vm after deleting its parent snapshot: changed")
	}

	// Deleting everything frees every object and inode on every node.
	c.mustAdmin("vdi", "delete", "vm")
	if got := c.mustRead("-s", "two", "vm"); !bytes.Equal(got, two) {
		t.Fatal("snapshot two after deleting its working VDI: changed")
	}
	c.mustAdmin("vdi", "delete", "-s", "two", "vm")
	if got := c.mustRead("-s", "mid", "vm"); !bytes.Equal(got, b) {
		t.Fatal("vdi read -s mid vm after deleting every other snapshot: changed")
	}
	// A clone with --no-share depends on nothing from the start.
	c.mustAdmin("vdi", "clone", "--no-share", "-s", "mid", "vm", "full")
	for _, r := range c.vdiRows() {
		if r.Name == "full" && (r.Shared != 0 || r.Used != 32*M) {
			t.Errorf("clone --no-share: used %d shared %d, want 32 MiB of its own", r.Used, r.Shared)
		}
	}
	c.mustAdmin("vdi", "delete", "-s", "mid", "vm")
	if got := c.mustRead("full"); !bytes.Equal(got, b) {
		t.Fatal("vdi read full after deleting the snapshot it was cloned from: changed")
	}
	c.mustAdmin("vdi", "delete", "full")
	c.mustAdmin("vdi", "delete", "cl")
	if got := c.mustRead("cl2"); !bytes.Equal(got, cl2) {
		t.Fatal("vdi read cl2 after deleting the clone it was made from: changed")
	}
	c.mustAdmin("vdi", "delete", "-s", "cs", "cl")
	c.mustAdmin("vdi", "delete", "cl2")
	if rows := c.vdiRows(); len(rows) != 0 {
		t.Errorf("vdi list after deleting everything: %+v", rows)
	}
	c.waitFor("every object file removed", 60*time.Second, func() bool { return len(c.objectFiles()) == 0 })
}

// TestE2ELiveSnapshot: snapshots of a VDI a client is writing. A client
// writing block after block sees its connection stay up, and the
// snapshot holds a prefix of its writes: each block acknowledged before
// the snapshot, none started after it. fio verifying its writes across
// two snapshots, one of them through another node, and two snapshots
// taken at the same moment (both succeed or one fails cleanly, and no tag
// is lost), then finds every block it wrote.
func TestE2ELiveSnapshot(t *testing.T) {
	needTools(t, "qemu-io", "fio")
	const blocks, bs = 200, 64 << 10
	c := startProcCluster(t, 3)
	c.format(3)
	c.mustAdmin("vdi", "create", "live", "64M")
	attached := func() bool {
		for _, r := range c.vdiRows() {
			if r.Name == "live" && !r.Snapshot && r.Attached != "" {
				return true
			}
		}
		return false
	}

	args := []string{"-f", "raw", c.nbdURI(0, "live")}
	for i := 0; i < blocks; i++ {
		args = append(args, "-c", fmt.Sprintf("write -P %d %d %d", i+1, i*bs, bs), "-c", "sleep 10")
	}
	writer := exec.Command("qemu-io", args...)
	var wout bytes.Buffer
	writer.Stdout, writer.Stderr = &wout, &wout
	startKilled(t, writer)
	c.waitFor("the writer attached", 30*time.Second, attached)
	time.Sleep(500 * time.Millisecond)
	c.mustAdmin("vdi", "snapshot", "-s", "prefix", "live")
	if err := writer.Wait(); err != nil || strings.Contains(wout.String(), "failed") {
		t.Fatalf("qemu-io writing through a snapshot: %v\n%s", err, wout.String())
	}
	snap := c.mustRead("-s", "prefix", "live")
	k := 0
	for k < blocks && snap[k*bs] == byte(k+1) {
		k++
	}
	for i := 0; i < blocks; i++ {
		want := byte(0)
		if i < k {
			want = byte(i + 1)
		}
		if !bytes.Equal(snap[i*bs:(i+1)*bs], bytes.Repeat([]byte{want}, bs)) {
			t.Fatalf("snapshot block %d is not %#x: the snapshot holds blocks 0..%d and then not a clean prefix", i, want, k-1)
		}
	}
	if k == 0 || k == blocks {
		t.Fatalf("snapshot holds %d of %d blocks: it was not taken while the writer ran", k, blocks)
	}
	t.Logf("the live snapshot holds the first %d of %d sequential writes", k, blocks)
	cur := c.mustRead("live")
	for i := 0; i < blocks; i++ {
		if cur[i*bs] != byte(i+1) || cur[(i+1)*bs-1] != byte(i+1) {
			t.Fatalf("working VDI block %d lost after the snapshot", i)
		}
	}

	fio := exec.Command("fio", "--name=live", "--ioengine=nbd", "--uri="+c.nbdURI(0, "live"),
		"--rw=randwrite", "--bs=4k", "--iodepth=16", "--size=32M", "--offset=16M", "--rate_iops=3000",
		"--verify=crc32c", "--do_verify=1", "--verify_fatal=1", "--verify_state_save=0")
	fio.Dir = t.TempDir()
	var fout bytes.Buffer
	fio.Stdout, fio.Stderr = &fout, &fout
	startKilled(t, fio)
	c.waitFor("fio attached", 30*time.Second, attached)
	time.Sleep(500 * time.Millisecond)
	c.mustAdmin("vdi", "snapshot", "-s", "f1", "live")
	time.Sleep(500 * time.Millisecond)
	if _, err := runCLI(c.bin, "vdi", "snapshot", "-s", "f2", "live", "-a", c.nodes[1].listen); err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond)
	errs := make(chan error, 2)
	for i, tag := range []string{"p", "q"} {
		go func() {
			_, err := runCLI(c.bin, "vdi", "snapshot", "-s", tag, "live", "-a", c.nodes[i+1].listen)
			errs <- err
		}()
	}
	var ok []string
	for range 2 {
		if err := <-errs; err != nil {
			t.Logf("one of two concurrent snapshots failed: %v", err)
		}
	}
	if err := fio.Wait(); err != nil || !strings.Contains(fout.String(), "err= 0") {
		t.Fatalf("fio across live snapshots: %v\n%s", err, fout.String())
	}
	for _, r := range c.vdiRows() {
		if r.Snapshot && r.Name == "live" && (r.Tag == "p" || r.Tag == "q") {
			ok = append(ok, r.Tag)
		}
	}
	if len(ok) == 0 {
		t.Fatal("neither of two concurrent snapshots was taken")
	}
	for _, tag := range []string{"prefix", "f1", "f2"} {
		if _, err := c.admin("vdi", "read", "-s", tag, "live", "0", "4096"); err != nil {
			t.Errorf("snapshot %s: %v", tag, err)
		}
	}
	c.checkVDI("live", 3)
}
