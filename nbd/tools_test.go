package nbd

import (
	"bytes"
	"context"
	"encoding/json"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// These tests drive the server with real NBD clients. A missing tool is a
// test failure, never a skip.

// toolTimeout bounds each tool run so a hung client fails the test.
const toolTimeout = 5 * time.Minute

func requireTool(t *testing.T, name string) {
	t.Helper()
	if _, err := exec.LookPath(name); err != nil {
		t.Fatalf("%s not found in $PATH: the nbd tests drive real NBD clients; run `make test`, "+
			"or install them with `apt-get install qemu-utils libnbd-bin fio`", name)
	}
}

// runTool runs a tool, failing the test if it exits non-zero, and returns
// its combined output.
func runTool(t *testing.T, name string, args ...string) string {
	t.Helper()
	requireTool(t, name)
	ctx, cancel := context.WithTimeout(t.Context(), toolTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = t.TempDir() // tools may leave files behind (fio's verify state)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// toolServer serves the exports of mb. Tools such as fio and qemu-img
// reconnect right after disconnecting, racing the detach of the previous
// connection, so Open waits for it.
func toolServer(t *testing.T, mb *MemBackend) string {
	t.Helper()
	mb.AttachWait = 30 * time.Second
	return startServer(t, &Server{Backend: mb})
}

// randomImage returns size random bytes with zeroed stretches, so that
// clients exercise zero writes and block status too.
func randomImage(seed uint64, size int) []byte {
	rng := rand.New(rand.NewPCG(seed, seed))
	p := make([]byte, size)
	for i := range p {
		p[i] = byte(rng.Uint32())
	}
	clear(p[size/4 : size/4+size/8])      // aligned zero region
	clear(p[size/2+1000 : size/2+300000]) // unaligned zero region
	return p
}

func writeFile(t *testing.T, name string, p []byte) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(path, p, 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// volumeBytes reads the whole volume.
func volumeBytes(t *testing.T, v *MemVolume) []byte {
	t.Helper()
	p := make([]byte, v.Size())
	if err := v.ReadAt(t.Context(), p, 0); err != nil {
		t.Fatal(err)
	}
	return p
}

// equalBytes reports where two large buffers first differ.
func equalBytes(t *testing.T, what string, want, got []byte) {
	t.Helper()
	if len(want) != len(got) {
		t.Fatalf("%s: %d bytes, want %d", what, len(got), len(want))
	}
	for i := range want {
		if want[i] != got[i] {
			t.Fatalf("%s: first difference at byte %d: %#x, want %#x", what, i, got[i], want[i])
		}
	}
}

// TestQemuImg: qemu-img convert writes a 16 MiB image into an existing
// export and qemu-img compare finds it identical.
func TestQemuImg(t *testing.T) {
	const size = 16 << 20
	mb := NewMemBackend()
	vol := mb.Add("disk", size)
	// Garbage where the image has zeroes: convert must zero it.
	vol.WriteAt(t.Context(), bytes.Repeat([]byte{0xff}, size), 0, false)
	addr := toolServer(t, mb)
	img := randomImage(1, size)
	src := writeFile(t, "src.raw", img)
	uri := "nbd://" + addr + "/disk"

	runTool(t, "qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", src, uri)
	out := runTool(t, "qemu-img", "compare", "-f", "raw", "-F", "raw", src, uri)
	if !strings.Contains(out, "Images are identical") {
		t.Errorf("qemu-img compare: %s", out)
	}
	equalBytes(t, "volume after qemu-img convert", img, volumeBytes(t, vol))
}

// TestQemuIo runs qemu-io commands with pattern verification: writes,
// FUA writes, write zeroes (with and without unmap), discard and flush.
func TestQemuIo(t *testing.T) {
	const size = 8 << 20
	mb := NewMemBackend()
	vol := mb.Add("disk", size)
	addr := toolServer(t, mb)
	uri := "nbd://" + addr + "/disk"
	cmds := []string{
		"write -P 0xab 0 1M",
		"read -P 0xab 0 1M",
		"write -P 0x11 1M 1M",
		"write -z 1M 1M",
		"read -P 0 1M 1M",
		"write -P 0x22 2M 1M",
		"discard 2M 1M",
		"write -f -P 0xcd 3M 64k",
		"read -P 0xcd 3M 64k",
		"write -z -u 3M 4k",
		"read -P 0 3M 4k",
		"read -P 0xcd 3149824 61440", // 3M+4k
		"aio_write -P 0x33 4M 512k",
		"aio_write -P 0x44 5M 512k",
		"aio_flush",
		"read -P 0x33 4M 512k",
		"read -P 0x44 5M 512k",
		"flush",
	}
	args := []string{"-f", "raw", uri}
	for _, c := range cmds {
		args = append(args, "-c", c)
	}
	out := runTool(t, "qemu-io", args...)
	for _, bad := range []string{"Pattern verification failed", "failed", "error", "Error"} {
		if strings.Contains(out, bad) {
			t.Fatalf("qemu-io output contains %q:\n%s", bad, out)
		}
	}
	if n := strings.Count(out, "read "); n != 7 {
		t.Errorf("qemu-io reported %d reads, want 7:\n%s", n, out)
	}

	want := make([]byte, size)
	fill := func(off, n int, b byte) { copy(want[off:off+n], bytes.Repeat([]byte{b}, n)) }
	fill(0, 1<<20, 0xab)
	fill(3<<20, 64<<10, 0xcd)
	clear(want[3<<20 : 3<<20+4096])
	fill(4<<20, 512<<10, 0x33)
	fill(5<<20, 512<<10, 0x44)
	got := volumeBytes(t, vol)
	clear(got[2<<20 : 3<<20]) // discarded: contents unspecified
	equalBytes(t, "volume after qemu-io", want, got)
}

// nbdinfoExport is the part of `nbdinfo --json` we check.
type nbdinfoExport struct {
	Name        string   `json:"export-name"`
	Description string   `json:"description"`
	Size        uint64   `json:"export-size"`
	Contexts    []string `json:"contexts"`
	ReadOnly    bool     `json:"is_read_only"`
	CanCache    bool     `json:"can_cache"`
	CanDF       bool     `json:"can_df"`
	CanFastZero bool     `json:"can_fast_zero"`
	CanFlush    bool     `json:"can_flush"`
	CanFUA      bool     `json:"can_fua"`
	CanMulti    bool     `json:"can_multi_conn"`
	CanTrim     bool     `json:"can_trim"`
	CanZero     bool     `json:"can_zero"`
	BlockMin    uint32   `json:"block_size_minimum"`
	BlockPref   uint32   `json:"block_size_preferred"`
	BlockMax    uint32   `json:"block_size_maximum"`
}

type nbdinfoOutput struct {
	Protocol   string          `json:"protocol"`
	TLS        bool            `json:"TLS"`
	Structured bool            `json:"structured"`
	Exports    []nbdinfoExport `json:"exports"`
}

// TestNbdinfo checks what libnbd learns from the handshake, for a
// writable and a read-only export, and the export list.
func TestNbdinfo(t *testing.T) {
	mb := NewMemBackend()
	mb.Add("disk", 16<<20).SetDescription("sheepdog VDI disk")
	mb.Add("snap", 4<<20).SetReadOnly(true)
	addr := toolServer(t, mb)
	full := nbdinfoExport{
		Contexts: []string{metaContextBaseAllocation},
		CanDF:    true, CanFastZero: true, CanFlush: true, CanFUA: true, CanTrim: true, CanZero: true,
		BlockMin: 1, BlockPref: 4096, BlockMax: DefaultMaxPayload,
	}
	disk := full
	disk.Name, disk.Description, disk.Size = "disk", "sheepdog VDI disk", 16<<20
	snap := full
	snap.Name, snap.Size, snap.ReadOnly = "snap", 4<<20, true

	for _, want := range []nbdinfoExport{disk, snap} {
		var got nbdinfoOutput
		out := runTool(t, "nbdinfo", "--json", "nbd://"+addr+"/"+want.Name)
		if err := json.Unmarshal([]byte(out), &got); err != nil {
			t.Fatalf("parsing nbdinfo --json: %v\n%s", err, out)
		}
		wantOut := nbdinfoOutput{Protocol: "newstyle-fixed", Structured: true, Exports: []nbdinfoExport{want}}
		if diff := cmp.Diff(wantOut, got); diff != "" {
			t.Errorf("nbdinfo --json %s (-want +got):\n%s", want.Name, diff)
		}
	}

	var list nbdinfoOutput
	out := runTool(t, "nbdinfo", "--list", "--json", "nbd://"+addr)
	if err := json.Unmarshal([]byte(out), &list); err != nil {
		t.Fatalf("parsing nbdinfo --list --json: %v\n%s", err, out)
	}
	if diff := cmp.Diff(nbdinfoOutput{Protocol: "newstyle-fixed", Structured: true, Exports: []nbdinfoExport{disk, snap}}, list); diff != "" {
		t.Errorf("nbdinfo --list (-want +got):\n%s", diff)
	}
}

type mapEntry struct {
	Offset      uint64 `json:"offset"`
	Length      uint64 `json:"length"`
	Type        uint32 `json:"type"`
	Description string `json:"description"`
}

// TestNbdinfoMap: `nbdinfo --map` shows data and holes as written and
// trimmed through the protocol.
func TestNbdinfoMap(t *testing.T) {
	const size = 2 << 20
	mb := NewMemBackend()
	mb.Add("disk", size)
	addr := toolServer(t, mb)

	c := connect(t, addr, "disk", true, false)
	c.writeAt(bytes.Repeat([]byte{1}, 64<<10), 0)
	c.writeAt(bytes.Repeat([]byte{2}, 4096), 1<<20)
	c.do(cmdTrim, 0, 16<<10, 16<<10, nil)
	c.do(cmdWriteZeroes, cmdFlagNoHole, 1<<20+4096, 4096, nil)
	c.disconnect()

	mapOf := func() []mapEntry {
		out := runTool(t, "nbdinfo", "--map", "--json", "nbd://"+addr+"/disk")
		var got []mapEntry
		if err := json.Unmarshal([]byte(out), &got); err != nil {
			t.Fatalf("parsing nbdinfo --map --json: %v\n%s", err, out)
		}
		return got
	}
	want := []mapEntry{
		{0, 16 << 10, 0, "data"},
		{16 << 10, 16 << 10, 3, "hole,zero"},
		{32 << 10, 32 << 10, 0, "data"},
		{64 << 10, 1<<20 - 64<<10, 3, "hole,zero"},
		{1 << 20, 8192, 0, "data"},
		{1<<20 + 8192, 1<<20 - 8192, 3, "hole,zero"},
	}
	if diff := cmp.Diff(want, mapOf()); diff != "" {
		t.Errorf("nbdinfo --map (-want +got):\n%s", diff)
	}

	// Trim everything: one hole.
	c = connect(t, addr, "disk", false, false)
	c.do(cmdTrim, 0, 0, size, nil)
	c.disconnect()
	if diff := cmp.Diff([]mapEntry{{0, size, 3, "hole,zero"}}, mapOf()); diff != "" {
		t.Errorf("nbdinfo --map after trim (-want +got):\n%s", diff)
	}
}

// TestNbdcopy copies an image into an export and back out with nbdcopy.
func TestNbdcopy(t *testing.T) {
	const size = 8 << 20
	mb := NewMemBackend()
	vol := mb.Add("disk", size)
	vol.WriteAt(t.Context(), bytes.Repeat([]byte{0xff}, size), 0, false)
	addr := toolServer(t, mb)
	img := randomImage(2, size)
	src := writeFile(t, "src.raw", img)
	dst := filepath.Join(t.TempDir(), "dst.raw")
	uri := "nbd://" + addr + "/disk"

	runTool(t, "nbdcopy", src, uri)
	equalBytes(t, "volume after nbdcopy in", img, volumeBytes(t, vol))
	runTool(t, "nbdcopy", uri, dst)
	got, err := os.ReadFile(dst)
	if err != nil {
		t.Fatal(err)
	}
	equalBytes(t, "file after nbdcopy out", img, got)
}

// fioResult is the part of fio's JSON output we check.
type fioResult struct {
	Jobs []struct {
		Name  string `json:"jobname"`
		Error int    `json:"error"`
		Read  struct {
			IOBytes uint64 `json:"io_bytes"`
		} `json:"read"`
		Write struct {
			IOBytes uint64 `json:"io_bytes"`
		} `json:"write"`
	} `json:"jobs"`
}

// TestFio: random 4 KiB writes at queue depth 16 through fio's nbd engine,
// verified with crc32c.
func TestFio(t *testing.T) {
	mb := NewMemBackend()
	mb.Add("disk", 16<<20)
	addr := toolServer(t, mb)
	out := runTool(t, "fio", "--name=v", "--ioengine=nbd", "--uri=nbd://"+addr+"/disk",
		"--rw=randwrite", "--bs=4k", "--iodepth=16", "--size=8M",
		"--verify=crc32c", "--do_verify=1", "--verify_fatal=1", "--verify_state_save=0", "--output-format=json")
	for _, bad := range []string{"verify", "bad magic", "crc32c"} {
		for _, line := range strings.Split(out, "\n") {
			if strings.Contains(line, bad) && !strings.Contains(line, `"`) { // skip JSON lines
				t.Errorf("fio reported: %s", line)
			}
		}
	}
	i := strings.Index(out, "{")
	if i < 0 {
		t.Fatalf("no JSON in fio output:\n%s", out)
	}
	var res fioResult
	if err := json.Unmarshal([]byte(out[i:]), &res); err != nil {
		t.Fatalf("parsing fio output: %v\n%s", err, out)
	}
	type job struct {
		Name        string
		Error       int
		Read, Wrote uint64
	}
	var got []job
	for _, j := range res.Jobs {
		got = append(got, job{j.Name, j.Error, j.Read.IOBytes, j.Write.IOBytes})
	}
	// Every written block was read back and verified.
	if diff := cmp.Diff([]job{{"v", 0, 8 << 20, 8 << 20}}, got); diff != "" {
		t.Errorf("fio jobs (-want +got):\n%s", diff)
	}
}

// TestQemuImgBusy: qemu-img shows the server's refusal of an export that
// is attached elsewhere, and the first client is unaffected.
func TestQemuImgBusy(t *testing.T) {
	requireTool(t, "qemu-img")
	mb := NewMemBackend()
	mb.Add("vdi", 1<<20)
	addr := startServer(t, &Server{Backend: mb}) // no AttachWait: refuse at once
	first := connect(t, addr, "vdi", true, false)
	first.writeAt([]byte("still here"), 0)

	ctx, cancel := context.WithTimeout(t.Context(), toolTimeout)
	defer cancel()
	out, err := exec.CommandContext(ctx, "qemu-img", "info", "nbd://"+addr+"/vdi").CombinedOutput()
	if err == nil {
		t.Fatalf("qemu-img info of an attached export succeeded:\n%s", out)
	}
	if !strings.Contains(string(out), `server reported: export "vdi": VDI is attached elsewhere`) {
		t.Errorf("qemu-img output lacks the busy message:\n%s", out)
	}
	if got := first.read(0, 10); string(got) != "still here" {
		t.Errorf("first client reads %q", got)
	}
	first.disconnect()
}
