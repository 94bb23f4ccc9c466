package faults

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// nsPrefix starts the name of every namespace the harness makes:
// sdfaults-<pid>-<n>, so that a later run can tell a leftover (its pid is
// gone) from a namespace of a harness still running.
const nsPrefix = "sdfaults-"

var nsCounter atomic.Int64

// Namespace is a private network namespace with its loopback up.
type Namespace struct {
	Name string
	log  *slog.Logger
}

// NewNamespace creates a namespace sdfaults-<pid>-<n> and brings its
// loopback up. The caller must Close it.
func NewNamespace(ctx context.Context, log *slog.Logger) (*Namespace, error) {
	name := fmt.Sprintf("%s%d-%d", nsPrefix, os.Getpid(), nsCounter.Add(1))
	if out, err := run(ctx, "ip", "netns", "add", name); err != nil {
		return nil, fmt.Errorf("ip netns add %s: %w: %s", name, err, out)
	}
	ns := &Namespace{Name: name, log: log}
	if out, err := ns.Run(ctx, "ip", "link", "set", "lo", "up"); err != nil {
		_ = ns.Close()
		return nil, fmt.Errorf("ip link set lo up in %s: %w: %s", name, err, out)
	}
	return ns, nil
}

// Command returns a command that runs inside the namespace.
func (ns *Namespace) Command(ctx context.Context, name string, args ...string) *exec.Cmd {
	return exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", ns.Name, name}, args...)...)
}

// Run runs a command inside the namespace and returns its combined output.
func (ns *Namespace) Run(ctx context.Context, name string, args ...string) ([]byte, error) {
	var out bytes.Buffer
	cmd := ns.Command(ctx, name, args...)
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	return out.Bytes(), err
}

// RunInput is Run with stdin.
func (ns *Namespace) RunInput(ctx context.Context, stdin string, name string, args ...string) ([]byte, error) {
	var out bytes.Buffer
	cmd := ns.Command(ctx, name, args...)
	cmd.Stdin = strings.NewReader(stdin)
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	return out.Bytes(), err
}

// Dial opens a TCP connection from local (an address of the namespace's
// loopback; empty for the kernel's choice) to addr inside the namespace.
func (ns *Namespace) Dial(ctx context.Context, local, addr string) (net.Conn, error) {
	var c net.Conn
	err := ns.do(func() error {
		d := net.Dialer{Timeout: 3 * time.Second}
		if local != "" {
			d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(local)}
		}
		var err error
		c, err = d.DialContext(ctx, "tcp", addr)
		return err
	})
	return c, err
}

// Listen opens a TCP listener on addr inside the namespace.
func (ns *Namespace) Listen(ctx context.Context, addr string) (net.Listener, error) {
	var ln net.Listener
	err := ns.do(func() error {
		var lc net.ListenConfig
		var err error
		ln, err = lc.Listen(ctx, "tcp", addr)
		return err
	})
	return ln, err
}

// do runs fn on an OS thread that joined the namespace and is thrown away
// afterwards (the goroutine exits still locked to it, so that it runs no
// other goroutine); a socket fn makes stays in the namespace, whichever
// thread uses it later.
func (ns *Namespace) do(fn func() error) error {
	ch := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // no UnlockOSThread: see above
		if err := ns.enter(); err != nil {
			ch <- err
			return
		}
		ch <- fn()
	}()
	return <-ch
}

// enter moves the calling OS thread into the namespace.
func (ns *Namespace) enter() error {
	f, err := os.Open(filepath.Join("/var/run/netns", ns.Name))
	if err != nil {
		return fmt.Errorf("open namespace %s: %w", ns.Name, err)
	}
	defer f.Close()
	if err := unix.Setns(int(f.Fd()), unix.CLONE_NEWNET); err != nil {
		return fmt.Errorf("setns %s: %w", ns.Name, err)
	}
	return nil
}

// Close kills whatever still runs in the namespace and deletes it.
func (ns *Namespace) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	return removeNamespace(ctx, ns.Name)
}

func removeNamespace(ctx context.Context, name string) error {
	if out, err := run(ctx, "ip", "netns", "pids", name); err == nil {
		for _, f := range strings.Fields(string(out)) {
			// Never this process: a thread of ours that joined the
			// namespace to dial may be the main thread, which Go keeps
			// (wedged) instead of ending it, and then the namespace lists
			// our pid too.
			if pid, err := strconv.Atoi(f); err == nil && pid != os.Getpid() {
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
		}
	}
	if out, err := run(ctx, "ip", "netns", "del", name); err != nil {
		return fmt.Errorf("ip netns del %s: %w: %s", name, err, out)
	}
	return nil
}

// CleanStale deletes sdfaults-* namespaces and unmounts sdfaults-* tmpfs
// mounts whose harness process is gone (a run killed with SIGKILL).
func CleanStale(ctx context.Context, log *slog.Logger) {
	out, err := run(ctx, "ip", "netns", "list")
	if err == nil {
		for _, line := range strings.Split(string(out), "\n") {
			f := strings.Fields(line)
			if len(f) == 0 || !strings.HasPrefix(f[0], nsPrefix) || alive(f[0]) {
				continue
			}
			if err := removeNamespace(ctx, f[0]); err != nil {
				log.Warn("stale namespace", "ns", f[0], "err", err)
			} else {
				log.Info("removed a stale namespace", "ns", f[0])
			}
		}
	}
	mounts, err := os.ReadFile("/proc/mounts")
	if err != nil {
		return
	}
	for _, line := range strings.Split(string(mounts), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		for _, part := range strings.Split(f[1], "/") {
			if strings.HasPrefix(part, nsPrefix) {
				if !alive(part) {
					_ = unix.Unmount(f[1], unix.MNT_DETACH)
					log.Info("unmounted a stale tmpfs", "path", f[1])
				}
				break
			}
		}
	}
}

// alive reports whether the harness process named in sdfaults-<pid>-...
// still runs.
func alive(name string) bool {
	rest := strings.TrimPrefix(name, nsPrefix)
	pidStr, _, _ := strings.Cut(rest, "-")
	pid, err := strconv.Atoi(pidStr)
	if err != nil {
		return true // not ours: leave it alone
	}
	if pid == os.Getpid() {
		return true
	}
	return syscall.Kill(pid, 0) == nil || errors.Is(syscall.Kill(pid, 0), syscall.EPERM)
}

func run(ctx context.Context, name string, args ...string) ([]byte, error) {
	return exec.CommandContext(ctx, name, args...).CombinedOutput()
}

// EnsureTools installs iproute2 and nftables with apt-get when ip or nft
// is missing, as the Makefile's deps target does for the other test
// packages, and fails when that does not help.
func EnsureTools(ctx context.Context, log *slog.Logger) error {
	var missing []string
	for tool, pkg := range map[string]string{"ip": "iproute2", "nft": "nftables"} {
		if _, err := exec.LookPath(tool); err != nil {
			missing = append(missing, pkg)
		}
	}
	if len(missing) == 0 {
		return nil
	}
	log.Info("installing missing packages", "packages", missing)
	if out, err := run(ctx, "apt-get", "update", "-qq"); err != nil {
		return fmt.Errorf("apt-get update: %w: %s", err, out)
	}
	cmd := exec.CommandContext(ctx, "apt-get", append([]string{"install", "-y", "-qq", "--no-install-recommends"}, missing...)...)
	cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("apt-get install %v: %w: %s", missing, err, out)
	}
	if _, err := exec.LookPath("ip"); err != nil {
		return fmt.Errorf("ip still missing after installing iproute2: %w", err)
	}
	return nil
}
