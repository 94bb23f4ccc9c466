package faults

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/sheepdog-go/sheepdog/daemon"
	"golang.org/x/sys/unix"
)

const (
	peerPort = 7000
	nbdPort  = 10809
	// tmpfsSize is each node's data directory: small enough to fill in a
	// moment, large enough for the workload's objects and journal.
	tmpfsSize = 256 << 20
)

// node is one sheep process of the cluster, on its own loopback address.
type node struct {
	idx  int
	ip   string // 127.0.0.x
	dir  string // mount point of its tmpfs
	logs string // directory of its log files

	mu       sync.Mutex
	cmd      *exec.Cmd
	done     chan struct{}
	exitErr  error
	expected bool // the harness stopped it (an exit is no surprise)
	paused   bool
	starts   int
}

// listen and nbd are the node's addresses as the others reach them.
func (n *node) listen() string { return fmt.Sprintf("%s:%d", n.ip, peerPort) }
func (n *node) nbd() string    { return fmt.Sprintf("%s:%d", n.ip, nbdPort) }

// hidden is where a node behind the proxy really listens: 127.0.2.x for
// its public 127.0.0.x.
func (n *node) hidden() string { return "127.0.2." + n.ip[strings.LastIndexByte(n.ip, '.')+1:] }

// running reports whether the process is up (paused counts as running).
func (n *node) running() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.cmd != nil
}

// cluster is the sheep processes of one run.
type cluster struct {
	ns     *Namespace
	bin    string
	base   string // run directory (logs, artifacts)
	mounts string // directory of the tmpfs mount points
	tick   time.Duration
	plant  string
	log    *slog.Logger
	nextIP int
	proxy  *Proxy // nil: faults are nftables rules

	mu         sync.Mutex
	nodes      []*node
	surprises  []string // unexpected exits
	mountedDir []string
}

func newCluster(ns *Namespace, bin, base, mounts string, tick time.Duration, plant string, log *slog.Logger) *cluster {
	return &cluster{ns: ns, bin: bin, base: base, mounts: mounts, tick: tick, plant: plant, log: log, nextIP: 2}
}

// addNode makes a node with a fresh address and an empty tmpfs.
func (c *cluster) addNode(ctx context.Context, idx int) (*node, error) {
	ip := fmt.Sprintf("127.0.0.%d", c.nextIP)
	c.nextIP++
	n := &node{idx: idx, ip: ip, dir: filepath.Join(c.mounts, strings.ReplaceAll(ip, ".", "_")), logs: c.base}
	if err := c.mountTmpfs(n.dir); err != nil {
		return nil, err
	}
	if c.proxy != nil {
		c.proxy.Alias(n.hidden(), n.ip)
		for _, port := range []int{peerPort, nbdPort} {
			if err := c.proxy.Forward(ctx, fmt.Sprintf("%s:%d", n.ip, port), fmt.Sprintf("%s:%d", n.hidden(), port)); err != nil {
				return nil, err
			}
		}
	}
	return n, nil
}

func (c *cluster) mountTmpfs(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("mkdir %s: %w", dir, err)
	}
	if err := unix.Mount("tmpfs", dir, "tmpfs", 0, fmt.Sprintf("size=%d", tmpfsSize)); err != nil {
		return fmt.Errorf("mount tmpfs on %s: %w", dir, err)
	}
	c.mu.Lock()
	c.mountedDir = append(c.mountedDir, dir)
	c.mu.Unlock()
	return nil
}

// start starts node n, joining through the other nodes' addresses
// (bootstrap: the first node of a new cluster joins nobody).
func (c *cluster) start(n *node, bootstrap bool) error {
	args := []string{"sheep", "--dir", n.dir, "--listen", n.listen(), "--nbd", n.nbd(),
		"--tick", c.tick.String(), "--log-level", "info"}
	if c.proxy != nil {
		args = []string{"sheep", "--dir", n.dir, "--listen", fmt.Sprintf("%s:%d", n.hidden(), peerPort), "--advertise", n.listen(),
			"--nbd", fmt.Sprintf("%s:%d", n.hidden(), nbdPort), "--tick", c.tick.String(), "--log-level", "info"}
	}
	if !bootstrap {
		for _, o := range c.members() {
			if o != n {
				args = append(args, "--join", o.listen())
			}
		}
	}
	if c.plant != "" {
		args = append(args, "--plant", c.plant)
	}
	logf, err := os.OpenFile(filepath.Join(n.logs, fmt.Sprintf("node%d-%s.log", n.idx, n.ip)), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		return fmt.Errorf("node log: %w", err)
	}
	fmt.Fprintf(logf, "=== harness: start %s at %s\n", strings.Join(args, " "), time.Now().Format(time.RFC3339Nano))
	// Not CommandContext: the harness ends its nodes itself.
	cmd := exec.Command("ip", append([]string{"netns", "exec", c.ns.Name, c.bin}, args...)...)
	cmd.Stdout, cmd.Stderr = logf, logf
	// No Pdeathsig: it fires when the forking thread exits, and the
	// harness's namespace dials end their threads. Leftovers are killed
	// with the namespace (Close, CleanStale).
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("start node %d: %w", n.idx, err)
	}
	done := make(chan struct{})
	n.mu.Lock()
	n.cmd, n.done, n.expected, n.paused = cmd, done, false, false
	n.starts++
	n.mu.Unlock()
	go func() {
		err := cmd.Wait()
		logf.Close()
		n.mu.Lock()
		n.exitErr = err
		surprise := !n.expected
		if n.cmd == cmd {
			n.cmd = nil
		}
		n.mu.Unlock()
		if surprise {
			msg := fmt.Sprintf("node %d (%s) exited on its own: %v%s", n.idx, n.ip, err, panicLine(n))
			c.log.Error(msg)
			c.mu.Lock()
			c.surprises = append(c.surprises, msg)
			c.mu.Unlock()
		}
		close(done)
	}()
	return nil
}

// panicLine is the first "panic:" line of a node's logs, if any.
func panicLine(n *node) string {
	b, err := os.ReadFile(filepath.Join(n.logs, fmt.Sprintf("node%d-%s.log", n.idx, n.ip)))
	if err != nil {
		return ""
	}
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, "panic:") || strings.HasPrefix(l, "fatal error:") {
			return "; " + l
		}
	}
	return ""
}

// stop signals node n and waits for it to exit (SIGKILL after 20 s).
func (c *cluster) stop(n *node, sig syscall.Signal) error {
	n.mu.Lock()
	cmd, done, paused := n.cmd, n.done, n.paused
	if cmd == nil {
		n.mu.Unlock()
		return nil
	}
	n.expected = true
	n.mu.Unlock()
	_ = cmd.Process.Signal(sig)
	if paused {
		_ = cmd.Process.Signal(syscall.SIGCONT)
	}
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		_ = cmd.Process.Kill()
		<-done
		return fmt.Errorf("node %d did not stop within 20s of %v", n.idx, sig)
	}
	n.mu.Lock()
	n.paused = false
	n.mu.Unlock()
	return nil
}

// signal sends sig (SIGSTOP, SIGCONT) to a running node.
func (c *cluster) signal(n *node, sig syscall.Signal) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.cmd == nil {
		return fmt.Errorf("node %d is not running", n.idx)
	}
	if err := n.cmd.Process.Signal(sig); err != nil {
		return fmt.Errorf("signal node %d: %w", n.idx, err)
	}
	n.paused = sig == syscall.SIGSTOP
	return nil
}

// dumpStacks makes every running node print its goroutines and exit
// (SIGQUIT), for the logs of a failed run.
func (c *cluster) dumpStacks() {
	for _, n := range c.members() {
		if err := c.stop(n, syscall.SIGQUIT); err != nil {
			c.log.Warn("stack dump", "node", n.idx, "err", err)
		}
	}
}

// members is the current set of nodes (a replaced node's new incarnation
// replaces its entry).
func (c *cluster) members() []*node {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.nodes)
}

// shutdown kills every node and unmounts every tmpfs.
// shutdown kills every node and unmounts their disks. With dump, nodes
// get SIGQUIT instead, so that each running one writes its goroutines'
// stacks into its log: a failed run keeps what a wedged node was doing.
func (c *cluster) shutdown(dump bool) {
	sig := syscall.SIGKILL
	if dump {
		sig = syscall.SIGQUIT
	}
	for _, n := range c.members() {
		_ = c.stop(n, sig)
	}
	c.mu.Lock()
	dirs := c.mountedDir
	c.mountedDir = nil
	c.mu.Unlock()
	for _, d := range dirs {
		if err := unix.Unmount(d, unix.MNT_DETACH); err != nil {
			c.log.Warn("unmount", "dir", d, "err", err)
		}
	}
}

// admin runs a sheepdog admin command against addr inside the namespace.
func (c *cluster) admin(ctx context.Context, addr string, args ...string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	cmd := c.ns.Command(ctx, c.bin, append(args, "-a", addr)...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return out, fmt.Errorf("sheepdog %s -a %s: %w: %s", strings.Join(args, " "), addr, err, strings.TrimSpace(stderr.String()))
	}
	return out, nil
}

// adminJSON runs an admin command with --json and decodes its answer.
func adminJSON[T any](ctx context.Context, c *cluster, addr string, args ...string) (T, error) {
	var v T
	out, err := c.admin(ctx, addr, append(args, "--json")...)
	if err != nil {
		return v, err
	}
	if err := json.Unmarshal(out, &v); err != nil {
		return v, fmt.Errorf("sheepdog %s: %w: %q", strings.Join(args, " "), err, out)
	}
	return v, nil
}

// statuses asks node n for every member's status.
func (c *cluster) statuses(ctx context.Context, n *node) ([]daemon.NodeStatus, error) {
	return adminJSON[[]daemon.NodeStatus](ctx, c, n.listen(), "node", "recovery")
}

// healthy reports whether every node is running and unpaused, the
// membership is exactly the current nodes, every one serves the same
// epoch and recovery has finished everywhere. It returns why not.
func (c *cluster) healthy(ctx context.Context) (bool, string) {
	nodes := c.members()
	want := map[string]bool{}
	for _, n := range nodes {
		n.mu.Lock()
		up, paused := n.cmd != nil, n.paused
		n.mu.Unlock()
		if !up || paused {
			return false, fmt.Sprintf("node %d is not running", n.idx)
		}
		want[n.listen()] = true
	}
	var last string
	for _, n := range nodes {
		rows, err := c.statuses(ctx, n)
		if err != nil {
			last = err.Error()
			continue
		}
		if len(rows) != len(want) {
			return false, fmt.Sprintf("node %d sees %d members, want %d", n.idx, len(rows), len(want))
		}
		for _, r := range rows {
			switch {
			case !want[r.Addr]:
				return false, fmt.Sprintf("member %s is not a current node", r.Addr)
			case !r.Serving:
				return false, fmt.Sprintf("%s is not serving", r.Addr)
			case r.Epoch != rows[0].Epoch:
				return false, fmt.Sprintf("epochs differ: %s has %d, %s has %d", r.Addr, r.Epoch, rows[0].Addr, rows[0].Epoch)
			case !r.AllDone:
				return false, fmt.Sprintf("%s: recovery not done everywhere (%d of %d left)", r.Addr, r.Remaining, r.Total)
			}
		}
		return true, ""
	}
	return false, "no node answers: " + last
}

// waitHealthy polls healthy until it holds or timeout passes.
func (c *cluster) waitHealthy(ctx context.Context, timeout time.Duration) (time.Duration, error) {
	start := time.Now()
	deadline := start.Add(timeout)
	for {
		ok, why := c.healthy(ctx)
		if ok {
			return time.Since(start), nil
		}
		if time.Now().After(deadline) {
			return time.Since(start), fmt.Errorf("not back to full redundancy within %v: %s", timeout, why)
		}
		select {
		case <-ctx.Done():
			return time.Since(start), ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// leader returns the node that reports itself raft leader, if any.
func (c *cluster) leader(ctx context.Context) (*node, error) {
	byAddr := map[string]*node{}
	for _, n := range c.members() {
		byAddr[n.listen()] = n
	}
	var last error = errors.New("no node answered")
	for _, n := range c.members() {
		if !n.running() {
			continue
		}
		rows, err := c.statuses(ctx, n)
		if err != nil {
			last = err
			continue
		}
		for _, r := range rows {
			if r.Leader && byAddr[r.Addr] != nil {
				return byAddr[r.Addr], nil
			}
		}
		last = errors.New("no member reports itself leader")
	}
	return nil, last
}

// surprised returns the unexpected exits so far.
func (c *cluster) surprised() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.surprises)
}
