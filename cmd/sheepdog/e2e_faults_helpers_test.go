package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sheepdog-go/sheepdog/daemon"
	"github.com/sheepdog-go/sheepdog/internal/freeport"
)

// Helpers for the endurance and disk-fault tests of real processes
// (e2e_endurance_test.go): admin commands through any node (node 0 may be
// the one that is down), waits that do not depend on node 0, background
// clients, fio segments and checks of the nodes' logs.

// envInt is the integer in environment variable name, or def when unset.
func envInt(t *testing.T, name string, def int) int {
	t.Helper()
	s := os.Getenv(name)
	if s == "" {
		return def
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 0 {
		t.Fatalf("%s=%q: want a non-negative integer", name, s)
	}
	return n
}

// envSeed is the seed in environment variable name, or one from the clock
// when unset; it is logged so that a failing run can be replayed.
func envSeed(t *testing.T, name string) uint64 {
	t.Helper()
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv(name); s != "" {
		n, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			t.Fatalf("%s=%q: want an unsigned integer", name, s)
		}
		seed = n
	}
	t.Logf("seed %d (replay with %s=%d)", seed, name, seed)
	return seed
}

// newProcCluster is startProcCluster with a hook that runs before node i
// first starts, on its empty data directory (to mount a filesystem
// there, say). Cleanups run in reverse: the nodes are killed before
// anything the hook registered is undone.
func newProcCluster(t *testing.T, n int, prepare func(i int, dir string)) *procCluster {
	t.Helper()
	c := &procCluster{t: t, bin: sheepdogBinary(t)}
	base := t.TempDir()
	for i := 0; i < n; i++ {
		p := &sheepProc{dir: filepath.Join(base, fmt.Sprintf("n%d", i)), listen: freeport.Addr(t), nbd: freeport.Addr(t)}
		if i > 0 {
			p.join = c.nodes[0].listen
		}
		if err := os.MkdirAll(p.dir, 0o755); err != nil {
			t.Fatal(err)
		}
		if prepare != nil {
			prepare(i, p.dir)
		}
		c.nodes = append(c.nodes, p)
	}
	for i := range c.nodes {
		c.start(i)
	}
	c.killAtCleanup(t)
	c.waitMembers(n)
	return c
}

// killAtCleanup kills every node when the test ends, and shows each
// one's log tail if it failed.
func (c *procCluster) killAtCleanup(t *testing.T) {
	t.Cleanup(func() {
		for i := range c.nodes {
			c.kill(i, syscall.SIGKILL)
		}
		if t.Failed() {
			for i := range c.nodes {
				t.Logf("--- node %d log (tail) ---\n%s", i, c.logTail(i, e2eLogLines()))
			}
		}
	})
}

// logPath is node i's log file (kept across restarts: start appends).
func (c *procCluster) logPath(i int) string {
	return filepath.Join(filepath.Dir(c.nodes[i].dir), fmt.Sprintf("n%d.log", i))
}

func (c *procCluster) logTail(i, lines int) string {
	b, _ := os.ReadFile(c.logPath(i))
	ls := strings.Split(string(b), "\n")
	if len(ls) > lines {
		ls = ls[len(ls)-lines:]
	}
	return strings.Join(ls, "\n")
}

// checkNoPanics fails the test if any node's log, over all its restarts,
// shows a panic or a fatal runtime error, quoting what follows it.
func (c *procCluster) checkNoPanics() {
	c.t.Helper()
	for i := range c.nodes {
		b, err := os.ReadFile(c.logPath(i))
		if err != nil {
			c.t.Errorf("node %d log: %v", i, err)
			continue
		}
		lines := strings.Split(string(b), "\n")
		for k, l := range lines {
			if strings.HasPrefix(l, "panic:") || strings.HasPrefix(l, "fatal error:") || strings.Contains(l, "goroutine ") && strings.Contains(l, "[running]") {
				end := min(k+20, len(lines))
				c.t.Errorf("node %d crashed (log line %d):\n%s", i, k+1, strings.Join(lines[k:end], "\n"))
				break
			}
		}
	}
}

// adminAt runs a CLI command against node i and returns its stdout.
func (c *procCluster) adminAt(i int, args ...string) (string, error) {
	return runCLI(c.bin, append(args, "-a", c.nodes[i].listen)...)
}

func (c *procCluster) mustAdminAt(i int, args ...string) string {
	c.t.Helper()
	out, err := c.adminAt(i, args...)
	if err != nil {
		c.t.Fatal(err)
	}
	return out
}

// statusesAt is every member's status as node i collects it.
func (c *procCluster) statusesAt(i int) ([]daemon.NodeStatus, bool) {
	out, err := c.adminAt(i, "node", "recovery", "--json")
	if err != nil {
		return nil, false
	}
	var rows []daemon.NodeStatus
	return rows, json.Unmarshal([]byte(out), &rows) == nil
}

// epochAt is the epoch node i reports.
func (c *procCluster) epochAt(i int) uint32 {
	c.t.Helper()
	var e uint32
	c.waitFor(fmt.Sprintf("node %d's status", i), 30*time.Second, func() bool {
		rows, ok := c.statusesAt(i)
		if ok && len(rows) > 0 {
			e = rows[0].Epoch
		}
		return ok && len(rows) > 0
	})
	return e
}

// waitServingAt waits until node i lists members members, all serving an
// epoch newer than e, and every member's listen address is one of the
// cluster's current addresses (a node restarted at a new address has
// replaced its old incarnation). A node that exits meanwhile fails the
// test at once, with the end of its log.
func (c *procCluster) waitServingAt(i int, e uint32, members int, timeout time.Duration) {
	c.t.Helper()
	addrs := map[string]bool{}
	for _, p := range c.nodes {
		addrs[p.listen] = true
	}
	c.waitFor(fmt.Sprintf("%d members serving an epoch after %d (asking node %d)", members, e, i), timeout, func() bool {
		c.failIfExited()
		rows, ok := c.statusesAt(i)
		if !ok || len(rows) != members {
			return false
		}
		for _, r := range rows {
			if !r.Serving || r.Epoch <= e || !addrs[r.Addr] {
				return false
			}
		}
		return true
	})
}

// waitRecoveredAt is waitRecovered asking node i.
func (c *procCluster) waitRecoveredAt(i, members int, timeout time.Duration) {
	c.t.Helper()
	c.waitFor(fmt.Sprintf("recovery to finish (asking node %d)", i), timeout, func() bool {
		rows, ok := c.statusesAt(i)
		if !ok || len(rows) != members {
			return false
		}
		for _, r := range rows {
			if !r.AllDone || !r.Serving || r.Epoch != rows[0].Epoch {
				return false
			}
		}
		return true
	})
}

// checkVDIAt is checkVDI through node i; it returns the report (Repaired
// counts what this check fixed).
func (c *procCluster) checkVDIAt(i int, name string, copies int) daemon.CheckReport {
	c.t.Helper()
	out := c.mustAdminAt(i, "vdi", "check", name, "--json")
	var cr daemon.CheckReport
	if err := json.Unmarshal([]byte(out), &cr); err != nil {
		c.t.Fatalf("vdi check output %q: %v", out, err)
	}
	if cr.Copies != copies || cr.Replicated != cr.Allocated || len(cr.Problems) > 0 {
		c.t.Fatalf("vdi check %s through node %d: %+v", name, i, cr)
	}
	return cr
}

// waitDetachedAt waits until node i lists VDI name as attached nowhere
// (a client that disconnected from another node has been detached).
func (c *procCluster) waitDetachedAt(i int, name string) {
	c.t.Helper()
	c.waitFor(fmt.Sprintf("%s detached (asking node %d)", name, i), 30*time.Second, func() bool {
		out, err := c.adminAt(i, "vdi", "list", "--json")
		if err != nil {
			return false
		}
		var rows []daemon.VDIRow
		if json.Unmarshal([]byte(out), &rows) != nil {
			return false
		}
		for _, r := range rows {
			if r.Name == name && !r.Snapshot {
				return r.Attached == ""
			}
		}
		return false
	})
}

// emptyDir removes everything inside dir, keeping dir itself (a mount
// point, possibly).
func emptyDir(t *testing.T, dir string) {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		if err := os.RemoveAll(filepath.Join(dir, e.Name())); err != nil {
			t.Fatal(err)
		}
	}
}

// bgProc is a client process running in the background; it is killed
// when the test ends if it is still running.
type bgProc struct {
	name string
	cmd  *exec.Cmd
	out  *lockedBuffer
	done chan error
}

func startBg(t *testing.T, name string, args ...string) *bgProc {
	t.Helper()
	b := &bgProc{name: name + " " + strings.Join(args, " "), cmd: exec.Command(name, args...), out: &lockedBuffer{}, done: make(chan error, 1)}
	b.cmd.Dir = t.TempDir()
	b.cmd.Stdout, b.cmd.Stderr = b.out, b.out
	if err := b.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { b.done <- b.cmd.Wait() }()
	t.Cleanup(func() {
		_ = b.cmd.Process.Kill()
		<-b.done
		b.done <- nil
	})
	return b
}

// wait waits for the process to exit and returns its output and exit
// error; after timeout it kills it and says so in the error.
func (b *bgProc) wait(timeout time.Duration) (string, error) {
	select {
	case err := <-b.done:
		b.done <- err
		return b.out.String(), err
	case <-time.After(timeout):
		_ = b.cmd.Process.Kill()
		err := <-b.done
		b.done <- err
		return b.out.String(), fmt.Errorf("%s: still running after %v (killed): %v", b.name, timeout, err)
	}
}

// fioRegion is one fio job's share of a VDI: fio writes it at random 4 KiB
// blocks, each once, with a crc32c verify header, flushing every 16
// writes, and reads it back to verify; the same job with verifyOnly reads
// it back again and verifies that every block holds what the last write
// put there. The seed fixes the order of the writes and each block's
// contents, so the verify-only job knows what to expect.
type fioRegion struct {
	off, size int64
	seed      uint64
}

func (r fioRegion) args(uri string, verifyOnly bool, rateIOPS int) []string {
	args := []string{"--name=region", "--ioengine=nbd", "--uri=" + uri,
		"--rw=randwrite", "--bs=4k", "--iodepth=8",
		fmt.Sprintf("--offset=%d", r.off), fmt.Sprintf("--size=%d", r.size),
		fmt.Sprintf("--randseed=%d", r.seed), "--fsync=16", "--end_fsync=1",
		"--verify=crc32c", "--do_verify=1", "--verify_fatal=1", "--verify_state_save=0"}
	if verifyOnly {
		args = append(args, "--verify_only")
	}
	if rateIOPS > 0 {
		args = append(args, fmt.Sprintf("--rate_iops=%d", rateIOPS))
	}
	return args
}

// fioOK requires fio to have exited cleanly with no errors reported.
func fioOK(t *testing.T, what, out string, err error) {
	t.Helper()
	if err != nil || !strings.Contains(out, "err= 0") || strings.Contains(out, "verify:") || strings.Contains(out, "bad magic") {
		t.Fatalf("fio %s: %v\n%s", what, err, out)
	}
}

// runToolCtx runs a client to completion and returns its output and exit
// error, for clients that are expected to fail sometimes.
func runToolCtx(timeout time.Duration, name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	return string(out), err
}

// comparePrefix compares the first size bytes of VDI vdi, read through
// node i's NBD export, with the raw image img, through qemu-img compare
// (the VDI may be larger than the image).
func (c *procCluster) comparePrefix(img string, i int, vdi string, size int64) {
	c.t.Helper()
	host, port, err := net.SplitHostPort(c.nodes[i].nbd)
	if err != nil {
		c.t.Fatal(err)
	}
	out := runTool(c.t, 2*time.Minute, "qemu-img", "compare", "--image-opts",
		"driver=raw,file.driver=file,file.filename="+img,
		fmt.Sprintf("driver=raw,size=%d,file.driver=nbd,file.server.type=inet,file.server.host=%s,file.server.port=%s,file.export=%s", size, host, port, vdi))
	if !strings.Contains(out, "Images are identical") {
		c.t.Fatalf("qemu-img compare of the first %d bytes of %s through node %d with %s: %s", size, vdi, i, img, out)
	}
}

// exited reports whether node i has exited by itself, with its exit
// error; an exited node is then stopped as far as the cluster's helpers
// are concerned (start starts it again).
func (c *procCluster) exited(i int) (bool, error) {
	p := c.nodes[i]
	if p.cmd == nil {
		return false, nil
	}
	select {
	case err := <-p.done:
		p.cmd = nil
		p.log.Close()
		return true, err
	default:
		return false, nil
	}
}

// statusesMust is statusesAt(i), which must answer.
func (c *procCluster) statusesMust(i int) []daemon.NodeStatus {
	c.t.Helper()
	var rows []daemon.NodeStatus
	c.waitFor(fmt.Sprintf("node %d's status", i), 30*time.Second, func() bool {
		var ok bool
		rows, ok = c.statusesAt(i)
		return ok
	})
	return rows
}

// failIfExited fails the test if a node the test started has exited by
// itself (crashed, or stopped on an error).
func (c *procCluster) failIfExited() {
	c.t.Helper()
	for i := range c.nodes {
		if gone, err := c.exited(i); gone {
			c.t.Fatalf("node %d exited (%v); the end of its log:\n%s", i, err, c.logTail(i, 40))
		}
	}
}
