package main

import (
	"bytes"
	"crypto/rand"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// End-to-end tests of `vdi write` and `vdi read` (vdiio.go) on real
// processes: data and holes round-trip, a sparse import stays sparse,
// zeros written over data zero it, the attach rules hold against a second
// client, and failures are clear errors.

// image is a VDI's expected contents, changed as the test writes.
type image []byte

// piece is a run of an input file: n bytes of random data or zeros.
type piece struct {
	n    int
	data bool
}

// makeInput writes a file of pieces and returns its path and contents.
func makeInput(t *testing.T, pieces ...piece) (string, []byte) {
	t.Helper()
	var b []byte
	for _, p := range pieces {
		chunk := make([]byte, p.n)
		if p.data {
			if _, err := rand.Read(chunk); err != nil {
				t.Fatal(err)
			}
		}
		b = append(b, chunk...)
	}
	f, err := os.CreateTemp(t.TempDir(), "input")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write(b); err != nil {
		t.Fatal(err)
	}
	f.Close()
	return f.Name(), b
}

// readBack reads the whole VDI with `vdi read --out` through node i and
// returns its contents and the bytes the output file allocates.
func (c *procCluster) readBack(i int, name string) ([]byte, int64) {
	c.t.Helper()
	out := filepath.Join(c.t.TempDir(), "out")
	if _, err := runCLI(c.bin, "vdi", "read", name, "--out", out, "-a", c.nodes[i].listen); err != nil {
		c.t.Fatal(err)
	}
	b, err := os.ReadFile(out)
	if err != nil {
		c.t.Fatal(err)
	}
	var st syscall.Stat_t
	if err := syscall.Stat(out, &st); err != nil {
		c.t.Fatal(err)
	}
	return b, st.Blocks * 512
}

// usedObjects is what `vdi list` says the VDI's own objects take, in
// objects of 4 MiB.
func (c *procCluster) usedObjects(name string) uint64 {
	c.t.Helper()
	for _, r := range c.vdiRows() {
		if r.Name == name && !r.Snapshot {
			return r.Used / (4 * mib)
		}
	}
	c.t.Fatalf("vdi list has no %s", name)
	return 0
}

func sameBytes(t *testing.T, what string, got, want []byte) {
	t.Helper()
	if bytes.Equal(got, want) {
		return
	}
	if len(got) != len(want) {
		t.Fatalf("%s: %d bytes, want %d", what, len(got), len(want))
	}
	for i := range got {
		if got[i] != want[i] {
			t.Fatalf("%s: differs from offset %d (MiB %d) on: got %#x, want %#x", what, i, i/mib, got[i], want[i])
		}
	}
}

func TestE2EVDIWriteRead(t *testing.T) {
	c := startProcCluster(t, 3)
	c.format(3)
	c.mustAdmin("vdi", "create", "img", "64M")
	model := make(image, 64*mib)

	// Each step writes an input (a file, or stdin) at an offset, then the
	// VDI is read back through another node and compared with the model,
	// and vdi list tells how many objects hold data.
	steps := []struct {
		name   string
		pieces []piece
		args   []string // after NAME: OFFSET [LEN]
		stdin  bool
		n      int // bytes of the input that land (LEN)
		used   uint64
		stored int // objects stored at all, tombstones included (0: not checked)
	}{
		{
			// Objects 0, 3 (a quarter of it) and 5 hold data; the zeros
			// elsewhere, 7 MiB of them in whole objects, are never written.
			name: "sparse import",
			pieces: []piece{{4 * mib, true}, {8 * mib, false}, {mib, true}, {7 * mib, false},
				{4 * mib, true}, {16 * mib, false}},
			used:   3,
			stored: 3,
		},
		{
			name:   "zeros over part of an object with data",
			pieces: []piece{{mib, false}},
			args:   []string{"12M"},
			used:   3,
		},
		{
			name:   "data at an unaligned offset from stdin",
			pieces: []piece{{3*mib + 4321, true}},
			args:   []string{fmt.Sprint(28*mib + 777)},
			stdin:  true,
			used:   4,
		},
		{
			name:   "LEN takes a part of the input",
			pieces: []piece{{8 * mib, true}},
			args:   []string{"48M", "1M"},
			n:      mib,
			used:   5,
		},
		{
			// Every object with data becomes a hole again.
			name:   "zeros over everything",
			pieces: []piece{{64 * mib, false}},
			used:   0,
		},
		{
			name:   "data again, ending at the VDI's end",
			pieces: []piece{{2 * mib, false}, {2 * mib, true}},
			args:   []string{"60M"},
			used:   1,
		},
	}
	for i, s := range steps {
		path, data := makeInput(t, s.pieces...)
		args := append([]string{"vdi", "write", "img"}, s.args...)
		args = append(args, "-a", c.nodes[i%3].listen)
		var err error
		if s.stdin {
			cmd := exec.Command(c.bin, args...)
			f, ferr := os.Open(path)
			if ferr != nil {
				t.Fatal(ferr)
			}
			// A pipe, not the file: its length is not known in advance.
			cmd.Stdin = io.MultiReader(f)
			var errb bytes.Buffer
			cmd.Stderr = &errb
			if err = cmd.Run(); err != nil {
				err = fmt.Errorf("%v: %s", err, errb.String())
			}
			f.Close()
		} else {
			_, err = runCLI(c.bin, append(args, "--file", path)...)
		}
		if err != nil {
			t.Fatalf("%s: %v", s.name, err)
		}
		off := 0
		if len(s.args) > 0 {
			v, perr := parseSize(s.args[0])
			if perr != nil {
				t.Fatal(perr)
			}
			off = int(v)
		}
		n := len(data)
		if s.n > 0 {
			n = s.n
		}
		copy(model[off:], data[:n])

		got, alloc := c.readBack((i+1)%3, "img")
		sameBytes(t, s.name+": vdi read --out", got, model)
		if used := c.usedObjects("img"); used != s.used {
			t.Errorf("%s: vdi list says %d objects hold data, want %d", s.name, used, s.used)
		}
		if s.stored > 0 {
			// Nothing at all was written where the input has holes: no
			// tombstones either.
			if cr := c.checkVDI("img", 3); cr.Allocated != s.stored {
				t.Errorf("%s: vdi check finds %d objects, want %d", s.name, cr.Allocated, s.stored)
			}
		}
		// The output file has holes where the VDI has never-written
		// objects (it may allocate a little more than the data).
		if limit := int64(s.used)*4*mib + mib; alloc > limit {
			t.Errorf("%s: the output file allocates %d bytes, more than the %d objects with data (%d)", s.name, alloc, s.used, limit)
		}
	}
	// A range to stdout, across data and a hole.
	out := c.mustAdmin("vdi", "read", "img", "59M", "3M")
	sameBytes(t, "vdi read img 59M 3M", []byte(out), model[59*mib:62*mib])
	c.checkVDI("img", 3)
}

func TestE2EVDIWriteReadErrors(t *testing.T) {
	c := startProcCluster(t, 3)
	c.format(3)
	c.mustAdmin("vdi", "create", "small", "8M")
	input, _ := makeInput(t, piece{4 * mib, true})
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"write to a missing VDI", []string{"vdi", "write", "nosuch", "--file", input}, `no VDI named "nosuch"`},
		{"read of a missing VDI", []string{"vdi", "read", "nosuch"}, `no VDI named "nosuch"`},
		{"read of a missing snapshot", []string{"vdi", "read", "-s", "nosnap", "small"}, "nosnap"},
		{"a missing input file", []string{"vdi", "write", "small", "--file", "/nonexistent/input"}, "no such file"},
		{"input past the end", []string{"vdi", "write", "small", "6M", "--file", input}, "past the end"},
		{"LEN past the end", []string{"vdi", "write", "small", "6M", "4M"}, "past the end"},
		{"offset past the end", []string{"vdi", "read", "small", "9M"}, "past the end"},
		{"an output file in a missing directory", []string{"vdi", "read", "small", "--out", "/nonexistent/out"}, "no such file"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := c.admin(tc.args...)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("%s: %v, want an error with %q", strings.Join(tc.args, " "), err, tc.want)
			}
		})
	}
	// Nothing of the refused writes landed.
	if got := c.mustRead("small"); !bytes.Equal(got, make([]byte, 8*mib)) {
		t.Error("a refused write changed the VDI")
	}
	if used := c.usedObjects("small"); used != 0 {
		t.Errorf("%d objects allocated by refused writes", used)
	}
}

// TestE2EVDIWriteAttach: the CLI and a second client take turns on a
// VDI: whoever has it attached keeps the other out, the CLI's read of a
// VDI attached elsewhere still works (through the admin channel), and
// once `vdi write` returns the VDI is detached everywhere.
func TestE2EVDIWriteAttach(t *testing.T) {
	needTools(t, "qemu-io", "qemu-img")
	c := startProcCluster(t, 3)
	c.format(3)
	c.mustAdmin("vdi", "create", "vm", "16M")
	input, data := makeInput(t, piece{8 * mib, true})
	c.mustAdmin("vdi", "write", "vm", "--file", input)

	// A second client (qemu-io) holds the VDI through node 1.
	hold := exec.Command("qemu-io", "-f", "raw", c.nbdURI(1, "vm"), "-c", "sleep 60000")
	startKilled(t, hold)
	c.waitFor("qemu-io attached", 30*time.Second, func() bool {
		for _, r := range c.vdiRows() {
			if r.Name == "vm" && r.Attached != "" {
				return true
			}
		}
		return false
	})
	zeros, _ := makeInput(t, piece{mib, false})
	for _, tc := range []struct {
		node int
		want string
	}{
		{0, "attached elsewhere"},
		{1, "another client of this node"},
	} {
		_, err := runCLI(c.bin, "vdi", "write", "vm", "--file", zeros, "-a", c.nodes[tc.node].listen)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("vdi write through node %d while qemu-io holds the VDI: %v, want %q", tc.node, err, tc.want)
		}
	}
	// Reading works meanwhile, without the attach.
	got := c.mustRead("vm", "0", "8M")
	sameBytes(t, "vdi read of a VDI attached elsewhere", got, data)
	_ = hold.Process.Kill()
	_ = hold.Wait()

	// Now the CLI holds it: a write fed slowly through a pipe.
	cmd := exec.Command(c.bin, "vdi", "write", "vm", "-a", c.nodes[0].listen)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	var errb bytes.Buffer
	cmd.Stderr = &errb
	startKilled(t, cmd)
	half := make([]byte, 4*mib)
	copy(half, data[:4*mib])
	for i := range half {
		half[i] ^= 0x5a
	}
	if _, err := stdin.Write(half[:2*mib]); err != nil {
		t.Fatal(err)
	}
	c.waitFor("vdi write attached", 60*time.Second, func() bool {
		out, err := exec.Command("qemu-img", "info", c.nbdURI(2, "vm")).CombinedOutput()
		return err != nil && strings.Contains(string(out), "attached elsewhere")
	})
	if _, err := stdin.Write(half[2*mib:]); err != nil {
		t.Fatal(err)
	}
	stdin.Close()
	if err := cmd.Wait(); err != nil {
		t.Fatalf("vdi write through a pipe: %v: %s", err, errb.String())
	}
	// Detached as soon as it returned: another node's client gets it at
	// once (a cross-node attach does not wait).
	out, err := exec.Command("qemu-img", "info", c.nbdURI(2, "vm")).CombinedOutput()
	if err != nil {
		t.Fatalf("qemu-img info right after vdi write: %v\n%s", err, out)
	}
	want := append(half, data[4*mib:]...)
	sameBytes(t, "after the piped write", c.mustRead("vm", "0", "8M"), want)
	if diff := cmp.Diff([]string{""}, attachedOf(c, "vm")); diff != "" {
		t.Errorf("vm still attached after the clients ended (-want +got):\n%s", diff)
	}
}

func attachedOf(c *procCluster, name string) []string {
	var out []string
	for _, r := range c.vdiRows() {
		if r.Name == name && !r.Snapshot {
			out = append(out, r.Attached)
		}
	}
	return out
}
