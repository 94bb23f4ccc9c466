package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/sheepdog-go/sheepdog/daemon"
	"github.com/sheepdog-go/sheepdog/internal/freeport"
	"github.com/sheepdog-go/sheepdog/internal/testbin"
)

// End-to-end tests: real `sheepdog sheep` processes on loopback, real
// disks in temporary directories, and real clients (qemu-img, qemu-io,
// nbdinfo, fio). A missing client fails the test: `make test` installs
// them (Debian packages qemu-utils, libnbd-bin, fio).

// sheepdogBinary builds the sheepdog binary once per test run.
func sheepdogBinary(t *testing.T) string {
	t.Helper()
	return testbin.Sheepdog(t, ".")
}

func needTools(t *testing.T, tools ...string) {
	t.Helper()
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s is not installed: run 'make test' (it installs qemu-utils, libnbd-bin and fio) or apt-get install them", tool)
		}
	}
}

// sheepProc is one running `sheepdog sheep`.
type sheepProc struct {
	dir, listen, nbd string
	join             string
	cmd              *exec.Cmd
	log              *os.File
	done             chan error
}

type procCluster struct {
	t     *testing.T
	bin   string
	nodes []*sheepProc
}

func startProcCluster(t *testing.T, n int) *procCluster {
	t.Helper()
	return newProcCluster(t, n, nil)
}

func (c *procCluster) start(i int) {
	p := c.nodes[i]
	args := []string{"sheep", "--dir", p.dir, "--listen", p.listen, "--nbd", p.nbd, "--log-level", "info"}
	if p.join != "" {
		args = append(args, "--join", p.join)
	}
	if err := os.MkdirAll(p.dir, 0o755); err != nil {
		c.t.Fatal(err)
	}
	log, err := os.OpenFile(filepath.Join(filepath.Dir(p.dir), fmt.Sprintf("n%d.log", i)), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		c.t.Fatal(err)
	}
	cmd := exec.Command(c.bin, args...)
	cmd.Stdout, cmd.Stderr = log, log
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		c.t.Fatal(err)
	}
	p.cmd, p.log, p.done = cmd, log, make(chan error, 1)
	go func() { p.done <- cmd.Wait() }()
}

// kill signals node i and waits for it to exit.
func (c *procCluster) kill(i int, sig syscall.Signal) error {
	p := c.nodes[i]
	if p.cmd == nil {
		return nil
	}
	_ = p.cmd.Process.Signal(sig)
	var err error
	select {
	case err = <-p.done:
	case <-time.After(30 * time.Second):
		_ = p.cmd.Process.Kill()
		err = <-p.done
		c.t.Errorf("node %d did not stop within 30s of %v", i, sig)
	}
	p.cmd = nil
	p.log.Close()
	return err
}

// admin runs a CLI command against node 0 and returns its stdout.
func (c *procCluster) admin(args ...string) (string, error) {
	return runCLI(c.bin, append(args, "-a", c.nodes[0].listen)...)
}

func runCLI(bin string, args ...string) (string, error) {
	var out, errb bytes.Buffer
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	if err != nil {
		return out.String(), fmt.Errorf("sheepdog %s: %v: %s", strings.Join(args, " "), err, errb.String())
	}
	return out.String(), nil
}

func (c *procCluster) mustAdmin(args ...string) string {
	c.t.Helper()
	out, err := c.admin(args...)
	if err != nil {
		c.t.Fatal(err)
	}
	return out
}

func (c *procCluster) waitMembers(n int) {
	c.t.Helper()
	c.waitFor(fmt.Sprintf("%d members", n), 60*time.Second, func() bool {
		out, err := c.admin("node", "list", "--json")
		if err != nil {
			return false
		}
		var rows []daemon.NodeRow
		return json.Unmarshal([]byte(out), &rows) == nil && len(rows) == n
	})
}

func (c *procCluster) waitFor(what string, timeout time.Duration, cond func() bool) {
	c.t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			c.t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// statuses is every member's status as node 0 collects it (false while
// a member does not answer).
func (c *procCluster) statuses() ([]daemon.NodeStatus, bool) {
	out, err := c.admin("node", "recovery", "--json")
	if err != nil {
		return nil, false
	}
	var rows []daemon.NodeStatus
	return rows, json.Unmarshal([]byte(out), &rows) == nil
}

// waitRecovered waits until every member reports recovery of the current
// epoch finished everywhere.
func (c *procCluster) waitRecovered(members int) {
	c.t.Helper()
	c.waitFor("recovery to finish", 120*time.Second, func() bool {
		rows, ok := c.statuses()
		if !ok || len(rows) != members {
			return false
		}
		for _, r := range rows {
			if !r.AllDone || r.Epoch != rows[0].Epoch {
				return false
			}
		}
		return true
	})
}

// epoch is the epoch node 0 reports.
func (c *procCluster) epoch() uint32 {
	c.t.Helper()
	rows, ok := c.statuses()
	if !ok || len(rows) == 0 {
		c.t.Fatalf("node recovery --json: no status (%d rows)", len(rows))
	}
	return rows[0].Epoch
}

// waitEpochAfter waits until every one of members members serves an epoch
// newer than e: a restarted node has rejoined (a restart is a new epoch),
// not merely been listed under its old incarnation.
func (c *procCluster) waitEpochAfter(e uint32, members int) {
	c.t.Helper()
	c.waitFor(fmt.Sprintf("%d members serving an epoch after %d", members, e), 60*time.Second, func() bool {
		rows, ok := c.statuses()
		if !ok || len(rows) != members {
			return false
		}
		for _, r := range rows {
			if !r.Serving || r.Epoch <= e {
				return false
			}
		}
		return true
	})
}

func (c *procCluster) format(copies int) {
	c.t.Helper()
	c.mustAdmin("cluster", "format", "--copies", fmt.Sprint(copies))
}

func (c *procCluster) nbdURI(i int, vdi string) string {
	return fmt.Sprintf("nbd://%s/%s", c.nodes[i].nbd, vdi)
}

func runTool(t *testing.T, timeout time.Duration, name string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = t.TempDir()
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

func randomFile(t *testing.T, size int) string {
	t.Helper()
	b := make([]byte, size)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	// Leave some zero stretches, as real images have.
	for off := 0; off+(1<<20) <= size; off += 7 << 20 {
		clear(b[off : off+(1<<20)])
	}
	p := filepath.Join(t.TempDir(), "img")
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// checkVDI runs `vdi check` and requires every allocated object to have
// all its replicas, identical.
func (c *procCluster) checkVDI(name string, copies int) daemon.CheckReport {
	c.t.Helper()
	out := c.mustAdmin("vdi", "check", name, "--json")
	var cr daemon.CheckReport
	if err := json.Unmarshal([]byte(out), &cr); err != nil {
		c.t.Fatalf("vdi check output %q: %v", out, err)
	}
	if cr.Copies != copies || cr.Replicated != cr.Allocated || len(cr.Problems) > 0 {
		c.t.Fatalf("vdi check %s: %+v", name, cr)
	}
	return cr
}

func TestE2EThreeNodesWithRealClients(t *testing.T) {
	needTools(t, "qemu-img", "qemu-io", "nbdinfo", "fio")
	c := startProcCluster(t, 3)
	c.format(3)
	c.mustAdmin("vdi", "create", "test", "256M")

	// qemu-img: a random 64 MiB image in through node 0, compared through node 1.
	img := randomFile(t, 64<<20)
	runTool(t, 2*time.Minute, "qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", img, c.nbdURI(0, "test"))
	out := runTool(t, 2*time.Minute, "qemu-img", "compare", "-f", "raw", "-F", "raw", img, c.nbdURI(1, "test"))
	if !strings.Contains(out, "Images are identical") {
		t.Fatalf("qemu-img compare: %s", out)
	}

	// qemu-io: patterns written and verified, FUA, zeroing, discard, flush.
	out = runTool(t, time.Minute, "qemu-io", "-f", "raw", c.nbdURI(2, "test"),
		"-c", "write -P 0xa5 100M 3M",
		"-c", "write -f -P 0x5a 104M 64k",
		"-c", "write -z 110M 4M",
		"-c", "discard 120M 8M",
		"-c", "flush",
		"-c", "read -P 0xa5 100M 3M",
		"-c", "read -P 0x5a 104M 64k",
		"-c", "read -P 0 110M 4M",
		"-c", "read -P 0 120M 8M")
	if strings.Contains(out, "fail") || strings.Contains(out, "error") || strings.Count(out, "read ") < 4 {
		t.Fatalf("qemu-io:\n%s", out)
	}

	// nbdinfo: the export's capabilities.
	var info struct {
		Exports []map[string]any `json:"exports"`
	}
	if err := json.Unmarshal([]byte(runTool(t, time.Minute, "nbdinfo", "--json", c.nbdURI(0, "test"))), &info); err != nil || len(info.Exports) != 1 {
		t.Fatalf("nbdinfo: %v %+v", err, info)
	}
	for _, k := range []string{"can_flush", "can_fua", "can_trim", "can_zero"} {
		if info.Exports[0][k] != true {
			t.Errorf("nbdinfo %s = %v", k, info.Exports[0][k])
		}
	}
	if info.Exports[0]["export-size"] != float64(256<<20) {
		t.Errorf("nbdinfo export-size = %v", info.Exports[0]["export-size"])
	}

	// fio with crc32c verification.
	out = runTool(t, 3*time.Minute, "fio", "--name=verify", "--ioengine=nbd", "--uri="+c.nbdURI(0, "test"),
		"--rw=randwrite", "--bs=4k", "--iodepth=16", "--size=32M", "--offset=128M",
		"--verify=crc32c", "--do_verify=1", "--verify_fatal=1", "--verify_state_save=0")
	if !strings.Contains(out, "err= 0") {
		t.Fatalf("fio:\n%s", out)
	}

	// Every object has its three identical replicas.
	cr := c.checkVDI("test", 3)
	if cr.Allocated < 16 {
		t.Fatalf("only %d objects allocated after writing 64 MiB", cr.Allocated)
	}

	// A second attach of the same VDI is refused with a clear message
	// (through the same node, once it waited 5 s for the first to let go).
	hold := exec.Command("qemu-io", "-f", "raw", c.nbdURI(0, "test"), "-c", "sleep 9000")
	if err := hold.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = hold.Process.Kill(); _ = hold.Wait() }()
	time.Sleep(500 * time.Millisecond)
	out2, err := exec.Command("qemu-img", "info", c.nbdURI(1, "test")).CombinedOutput()
	if err == nil || !strings.Contains(string(out2), "attached elsewhere") {
		t.Fatalf("second attach through another node: err=%v output:\n%s", err, out2)
	}
	out2, err = exec.Command("qemu-img", "info", c.nbdURI(0, "test")).CombinedOutput()
	if err == nil || !strings.Contains(string(out2), "another client of this node") {
		t.Fatalf("second attach through the same node: err=%v output:\n%s", err, out2)
	}
}

// TestE2EKillNodeDuringFio: kill -9 a node in the middle of a verifying
// fio write; fio's I/O continues after the epoch change and verifies; the
// node restarts, recovery ends, and every object has its three identical
// replicas again.
func TestE2EKillNodeDuringFio(t *testing.T) {
	needTools(t, "fio")
	c := startProcCluster(t, 3)
	c.format(3)
	c.mustAdmin("vdi", "create", "fio", "128M")
	fio := exec.Command("fio", "--name=killtest", "--ioengine=nbd", "--uri="+c.nbdURI(0, "fio"),
		"--rw=randwrite", "--bs=4k", "--iodepth=8", "--size=64M", "--rate_iops=2000",
		"--verify=crc32c", "--do_verify=1", "--verify_fatal=1", "--verify_state_save=0")
	fio.Dir = t.TempDir()
	var fout bytes.Buffer
	fio.Stdout, fio.Stderr = &fout, &fout
	if err := fio.Start(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(2 * time.Second)
	before := c.epoch()
	if err := c.kill(2, syscall.SIGKILL); err == nil {
		t.Fatal("a kill -9'd node exited cleanly?")
	}
	t.Log("node 2 killed")
	done := make(chan error, 1)
	go func() { done <- fio.Wait() }()
	select {
	case err := <-done:
		if err != nil || !strings.Contains(fout.String(), "err= 0") {
			t.Fatalf("fio failed after a node was killed: %v\n%s", err, fout.String())
		}
	case <-time.After(5 * time.Minute):
		_ = fio.Process.Kill()
		t.Fatalf("fio did not finish:\n%s", fout.String())
	}
	c.start(2)
	c.waitEpochAfter(before, 3)
	c.waitRecovered(3)
	cr := c.checkVDI("fio", 3)
	if cr.Allocated < 16 {
		t.Fatalf("only %d objects after writing 64 MiB: %+v", cr.Allocated, cr)
	}
}

// TestE2EFlushedDataSurvivesKillingEveryNode: data written and flushed
// through NBD is read back intact after every daemon was killed with
// SIGKILL and restarted.
func TestE2EFlushedDataSurvivesKillingEveryNode(t *testing.T) {
	needTools(t, "qemu-io")
	c := startProcCluster(t, 3)
	c.format(3)
	c.mustAdmin("vdi", "create", "durable", "64M")
	runTool(t, time.Minute, "qemu-io", "-f", "raw", c.nbdURI(1, "durable"),
		"-c", "write -P 0x11 0 4M", "-c", "write -P 0x22 5M 1M", "-c", "write -P 0x33 63M 1M", "-c", "flush")
	before := c.epoch()
	for i := range c.nodes {
		c.kill(i, syscall.SIGKILL)
	}
	for i := range c.nodes {
		c.start(i)
	}
	c.waitEpochAfter(before, 3)
	c.waitRecovered(3)
	out := runTool(t, time.Minute, "qemu-io", "-f", "raw", c.nbdURI(2, "durable"),
		"-c", "read -P 0x11 0 4M", "-c", "read -P 0x22 5M 1M", "-c", "read -P 0x33 63M 1M", "-c", "read -P 0 4M 1M")
	if strings.Contains(out, "fail") {
		t.Fatalf("after restarting every node:\n%s", out)
	}
	c.checkVDI("durable", 3)
}

// TestE2ECleanShutdownAndRestart: SIGTERM stops a node cleanly, `cluster
// shutdown` stops them all, and the cluster comes back with its data.
func TestE2ECleanShutdownAndRestart(t *testing.T) {
	needTools(t, "qemu-io")
	c := startProcCluster(t, 3)
	c.format(2)
	c.mustAdmin("vdi", "create", "v", "32M", "--copies", "2")
	runTool(t, time.Minute, "qemu-io", "-f", "raw", c.nbdURI(0, "v"), "-c", "write -P 0x44 1M 2M", "-c", "flush")
	before := c.epoch()
	if err := c.kill(1, syscall.SIGTERM); err != nil {
		t.Fatalf("SIGTERM: node exited with %v", err)
	}
	c.start(1)
	// The restarted node must have rejoined before the shutdown: a node
	// still catching up ignores a shutdown it did not serve through (as
	// every node does with the old one when the cluster starts again).
	c.waitEpochAfter(before, 3)
	if _, err := c.admin("cluster", "shutdown"); err != nil {
		t.Fatal(err)
	}
	for i, p := range c.nodes {
		select {
		case err := <-p.done:
			if err != nil {
				t.Errorf("node %d after cluster shutdown: %v", i, err)
			}
			p.cmd = nil
			p.log.Close()
		case <-time.After(30 * time.Second):
			t.Fatalf("node %d still running 30s after cluster shutdown", i)
		}
	}
	for i := range c.nodes {
		c.start(i)
	}
	c.waitMembers(3)
	c.waitRecovered(3)
	out := runTool(t, time.Minute, "qemu-io", "-f", "raw", c.nbdURI(2, "v"), "-c", "read -P 0x44 1M 2M")
	if strings.Contains(out, "fail") {
		t.Fatalf("after cluster shutdown and restart:\n%s", out)
	}
}

// nbdConn is a minimal NBD client for protocol tests (simple replies).
type nbdConn struct {
	c     net.Conn
	size  uint64
	flags uint16 // transmission flags
}

func nbdDial(t *testing.T, addr, export string) *nbdConn {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	_ = c.SetDeadline(time.Now().Add(30 * time.Second))
	hdr := make([]byte, 18)
	if _, err := io.ReadFull(c, hdr); err != nil || string(hdr[:8]) != "NBDMAGIC" {
		t.Fatalf("handshake: %v %q", err, hdr)
	}
	// Client flags: fixed newstyle + no zeroes; then NBD_OPT_EXPORT_NAME.
	msg := binary.BigEndian.AppendUint32(nil, 3)
	msg = binary.BigEndian.AppendUint64(msg, 0x49484156454F5054)
	msg = binary.BigEndian.AppendUint32(msg, 1)
	msg = binary.BigEndian.AppendUint32(msg, uint32(len(export)))
	msg = append(msg, export...)
	if _, err := c.Write(msg); err != nil {
		t.Fatal(err)
	}
	ans := make([]byte, 10)
	if _, err := io.ReadFull(c, ans); err != nil {
		t.Fatalf("export %q: %v", export, err)
	}
	return &nbdConn{c: c, size: binary.BigEndian.Uint64(ans), flags: binary.BigEndian.Uint16(ans[8:])}
}

func (n *nbdConn) request(magic uint32, typ uint16, handle, off uint64, length uint32, data []byte) error {
	b := binary.BigEndian.AppendUint32(nil, magic)
	b = binary.BigEndian.AppendUint16(b, 0)
	b = binary.BigEndian.AppendUint16(b, typ)
	b = binary.BigEndian.AppendUint64(b, handle)
	b = binary.BigEndian.AppendUint64(b, off)
	b = binary.BigEndian.AppendUint32(b, length)
	_, err := n.c.Write(append(b, data...))
	return err
}

// reply reads a simple reply; a successful read brings length bytes.
func (n *nbdConn) reply(readLen int) (uint32, uint64, []byte, error) {
	h := make([]byte, 16)
	if _, err := io.ReadFull(n.c, h); err != nil {
		return 0, 0, nil, err
	}
	if binary.BigEndian.Uint32(h) != 0x67446698 {
		return 0, 0, nil, fmt.Errorf("bad reply magic %x", h[:4])
	}
	errno, handle := binary.BigEndian.Uint32(h[4:]), binary.BigEndian.Uint64(h[8:])
	var data []byte
	if errno == 0 && readLen > 0 {
		data = make([]byte, readLen)
		if _, err := io.ReadFull(n.c, data); err != nil {
			return 0, 0, nil, err
		}
	}
	return errno, handle, data, nil
}

const (
	nbdRequestMagic = 0x25609513
	nbdCmdRead      = 0
	nbdCmdWrite     = 1
	nbdEINVAL       = 22
	nbdENOSPC       = 28
)

// TestE2EMalformedNBDRequests: bad requests get the right NBD error and
// the same connection keeps serving; a bad magic closes that connection
// only.
func TestE2EMalformedNBDRequests(t *testing.T) {
	c := startProcCluster(t, 1)
	c.format(1)
	c.mustAdmin("vdi", "create", "m", "8M")
	n := nbdDial(t, c.nodes[0].nbd, "m")
	defer n.c.Close()
	if n.size != 8<<20 {
		t.Fatalf("export size %d", n.size)
	}
	good := func(handle uint64) {
		t.Helper()
		if err := n.request(nbdRequestMagic, nbdCmdWrite, handle, 4096, 4, []byte("abcd")); err != nil {
			t.Fatal(err)
		}
		if errno, h, _, err := n.reply(0); err != nil || errno != 0 || h != handle {
			t.Fatalf("good write after a bad request: errno %d handle %d err %v", errno, h, err)
		}
		if err := n.request(nbdRequestMagic, nbdCmdRead, handle+1, 4096, 4, nil); err != nil {
			t.Fatal(err)
		}
		if errno, _, data, err := n.reply(4); err != nil || errno != 0 || string(data) != "abcd" {
			t.Fatalf("good read after a bad request: errno %d data %q err %v", errno, data, err)
		}
	}
	good(1)
	tests := []struct {
		name      string
		typ       uint16
		off       uint64
		length    uint32
		data      []byte
		wantErrno uint32
	}{
		{"read beyond the end", nbdCmdRead, 8 << 20, 4096, nil, nbdEINVAL},
		{"read crossing the end", nbdCmdRead, 8<<20 - 512, 4096, nil, nbdEINVAL},
		{"write beyond the end", nbdCmdWrite, 8 << 20, 4, []byte("zzzz"), nbdENOSPC},
		{"oversized read", nbdCmdRead, 0, 64 << 20, nil, nbdEINVAL},
		{"unknown command", 99, 0, 0, nil, nbdEINVAL},
	}
	for i, tt := range tests {
		h := uint64(100 + 10*i)
		if err := n.request(nbdRequestMagic, tt.typ, h, tt.off, tt.length, tt.data); err != nil {
			t.Fatal(err)
		}
		errno, gotH, _, err := n.reply(0)
		if err != nil || errno != tt.wantErrno || gotH != h {
			t.Fatalf("%s: errno %d (want %d) handle %d err %v", tt.name, errno, tt.wantErrno, gotH, err)
		}
		good(h + 1)
	}
	// A bad magic: the stream cannot be trusted, so that connection ends;
	// the server keeps serving others.
	if err := n.request(0xdeadbeef, nbdCmdRead, 7, 0, 512, nil); err != nil {
		t.Fatal(err)
	}
	if _, _, _, err := n.reply(0); err == nil {
		t.Fatal("connection still open after a request with a bad magic")
	}
	n.c.Close()
	n2 := nbdDial(t, c.nodes[0].nbd, "m")
	defer n2.c.Close()
	*n = *n2
	good(500)

	// Garbage on the peer port closes that connection only; the node keeps
	// serving admin requests and I/O.
	for _, junk := range [][]byte{[]byte("GET / HTTP/1.0\r\n\r\n"), bytes.Repeat([]byte{0xff}, 4096), {'S', 'D', 'O', 'G', 0, 1, 1, 0}} {
		g, err := net.Dial("tcp", c.nodes[0].listen)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = g.Write(junk)
		_ = g.SetReadDeadline(time.Now().Add(5 * time.Second))
		_, _ = io.ReadAll(g)
		g.Close()
	}
	if _, err := c.admin("node", "info"); err != nil {
		t.Fatalf("node stopped answering after garbage on its peer port: %v", err)
	}
	good(600)
}

// TestE2ELocalCluster: `sheepdog local` (what `make run` starts) brings up
// a cluster with an NBD export QEMU can use at once.
func TestE2ELocalCluster(t *testing.T) {
	needTools(t, "qemu-img")
	bin := sheepdogBinary(t)
	dir := t.TempDir()
	// The nodes use consecutive ports: find runs of free ones below the
	// ephemeral range, where other tests' connections do not land.
	p1, p2 := fmt.Sprint(freeport.Run(t, 3)), fmt.Sprint(freeport.Run(t, 3))
	nbdPort := "127.0.0.1:" + p2
	cmd := exec.Command(bin, "local", "--nodes", "3", "--dir", dir, "--port", p1, "--nbd-port", p2, "--vdi-size", "1G")
	var out lockedBuffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cmd.Process.Kill(); _, _ = cmd.Process.Wait() }()
	deadline := time.Now().Add(60 * time.Second)
	for !strings.Contains(out.String(), "NBD export ready") {
		if time.Now().After(deadline) {
			t.Fatalf("no export after 60s:\n%s", out.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
	info := runTool(t, time.Minute, "qemu-img", "info", "nbd://"+nbdPort+"/vm0")
	if !strings.Contains(info, "virtual size: 1 GiB") {
		t.Fatalf("qemu-img info:\n%s", info)
	}
	if err := cmd.Process.Signal(os.Interrupt); err != nil {
		t.Fatal(err)
	}
	if _, err := cmd.Process.Wait(); err != nil {
		t.Fatalf("local did not stop cleanly: %v\n%s", err, out.String())
	}
}

// lockedBuffer is a bytes.Buffer safe for a writer goroutine and a reader.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// TestE2EMetrics: --metrics serves Prometheus metrics with I/O counts,
// latencies, the epoch and recovery progress.
func TestE2EMetrics(t *testing.T) {
	needTools(t, "qemu-io")
	bin := sheepdogBinary(t)
	dir := t.TempDir()
	listen, nbdAddr, metrics := freeport.Addr(t), freeport.Addr(t), freeport.Addr(t)
	cmd := exec.Command(bin, "sheep", "--dir", dir, "--listen", listen, "--nbd", nbdAddr, "--metrics", metrics)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	c := &procCluster{t: t, bin: bin, nodes: []*sheepProc{{listen: listen, nbd: nbdAddr}}}
	c.waitMembers(1)
	c.format(1)
	c.mustAdmin("vdi", "create", "m", "16M")
	runTool(t, time.Minute, "qemu-io", "-f", "raw", "nbd://"+nbdAddr+"/m", "-c", "write -P 1 0 1M", "-c", "read -P 1 0 1M")
	scrape := func() (string, error) {
		resp, err := http.Get("http://" + metrics + "/metrics")
		if err != nil {
			return "", err
		}
		defer resp.Body.Close()
		out, err := io.ReadAll(resp.Body)
		if err == nil && resp.StatusCode != http.StatusOK {
			err = fmt.Errorf("status %s", resp.Status)
		}
		return string(out), err
	}
	// The loop publishes its state at most every 100 ms: scrape until it
	// shows the format and the I/O.
	wants := []string{`sheepdog_io_requests_total{op="write"}`, `sheepdog_io_requests_total{op="read"}`,
		"sheepdog_io_latency_seconds_bucket", "sheepdog_epoch 1", "sheepdog_recovery_remaining_objects", "sheepdog_members 1",
		"sheepdog_gateway_reads_local_total", "sheepdog_gateway_direct_ops_total"}
	var missing []string
	deadline := time.Now().Add(10 * time.Second)
	for {
		body, err := scrape()
		missing = missing[:0]
		for _, want := range wants {
			if err != nil || !strings.Contains(body, want) {
				missing = append(missing, want)
			}
		}
		if len(missing) == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	for _, want := range missing {
		t.Errorf("metrics lack %q", want)
	}
	// Once the journal has applied the write, a read of those bytes finds
	// them in memory and the event loop serves it itself. A read racing
	// the applier rightly takes the slow path, so read until one is
	// served from memory.
	cached := regexp.MustCompile(`(?m)^sheepdog_disk_reads_cached_total ([0-9]+)`)
	c.waitFor("a read served from the page cache", 20*time.Second, func() bool {
		runTool(t, time.Minute, "qemu-io", "-f", "raw", "nbd://"+nbdAddr+"/m", "-c", "read -P 1 0 1M")
		b, err := scrape()
		m := cached.FindStringSubmatch(b)
		return err == nil && m != nil && m[1] != "0"
	})
}

// TestE2EBlockStatus: base:allocation block status reports the objects
// that hold data and the holes between them, through a node that is not
// every object's primary, so sparse-aware clients skip what was never
// written.
func TestE2EBlockStatus(t *testing.T) {
	needTools(t, "qemu-img", "qemu-io")
	c := startProcCluster(t, 3)
	c.format(3)
	c.mustAdmin("vdi", "create", "sparse", "64M")
	runTool(t, time.Minute, "qemu-io", "-f", "raw", c.nbdURI(0, "sparse"),
		"-c", "write -P 0x11 0 4k",
		"-c", "write -P 0x22 21M 1M",
		"-c", "write -P 0x33 40M 8M",
		"-c", "discard 44M 4M")
	var exts []struct {
		Start  uint64 `json:"start"`
		Length uint64 `json:"length"`
		Data   bool   `json:"data"`
		Zero   bool   `json:"zero"`
	}
	out := runTool(t, time.Minute, "qemu-img", "map", "--output=json", "-f", "raw", c.nbdURI(1, "sparse"))
	if err := json.Unmarshal([]byte(out), &exts); err != nil {
		t.Fatalf("qemu-img map: %v\n%s", err, out)
	}
	type run struct{ Start, End uint64 }
	var data []run
	for _, e := range exts {
		if e.Data {
			if k := len(data) - 1; k >= 0 && data[k].End == e.Start {
				data[k].End += e.Length
			} else {
				data = append(data, run{e.Start, e.Start + e.Length})
			}
		}
	}
	const M = 1 << 20
	want := []run{{0, 4 * M}, {20 * M, 24 * M}, {40 * M, 44 * M}}
	if diff := cmp.Diff(want, data); diff != "" {
		t.Errorf("allocated ranges (-want +got):\n%s\nqemu-img map: %s", diff, out)
	}
}

// e2eLogLines is how many lines of each node's log a failed test shows
// (E2E_LOG_LINES, default 60).
func e2eLogLines() int {
	if n, err := strconv.Atoi(os.Getenv("E2E_LOG_LINES")); err == nil && n > 0 {
		return n
	}
	return 60
}
