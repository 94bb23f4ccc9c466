package main

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// stopGrace is how long a process gets between SIGTERM and SIGKILL.
const stopGrace = 15 * time.Second

// supervisor owns the long-running processes (sheep, qemu-nbd) and the
// signal handling: the first SIGINT/SIGTERM/SIGHUP cancels ctx, which kills
// any running fio or admin command and makes run return and stop
// everything; a second signal skips the SIGTERM grace period.
type supervisor struct {
	ctx    context.Context
	cancel context.CancelFunc
	sigs   chan os.Signal
	hurry  chan struct{} // closed on the second signal

	mu    sync.Mutex
	procs []*proc
}

func newSupervisor() *supervisor {
	s := &supervisor{sigs: make(chan os.Signal, 2), hurry: make(chan struct{})}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	signal.Notify(s.sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	go func() {
		sig, ok := <-s.sigs
		if !ok {
			return
		}
		fmt.Fprintf(os.Stderr, "\nbench: got %v: stopping (again to kill at once)\n", sig)
		s.cancel()
		if _, ok := <-s.sigs; ok {
			close(s.hurry)
		}
	}()
	return s
}

// stopSignals restores the default signal handling.
func (s *supervisor) stopSignals() {
	signal.Stop(s.sigs)
	close(s.sigs)
	s.cancel()
}

// proc is a long-running child in its own process group.
type proc struct {
	name    string
	logPath string
	cmd     *exec.Cmd
	done    chan struct{} // closed when the process has exited
	err     error         // Wait's result, valid once done is closed
	killed  bool          // needed SIGKILL
}

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// start runs argv in the background with stdout and stderr in logPath.
func (s *supervisor) start(name, logPath string, argv ...string) (*proc, error) {
	log, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = log, log
	cmd.Env = childEnv()
	cmd.SysProcAttr = sysProcAttr()
	fmt.Fprintf(log, "# %s\n", strings.Join(argv, " "))
	if err := cmd.Start(); err != nil {
		log.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &proc{name: name, logPath: logPath, cmd: cmd, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		log.Close()
		close(p.done)
	}()
	s.mu.Lock()
	s.procs = append(s.procs, p)
	s.mu.Unlock()
	return p, nil
}

// stopAll stops every process (in parallel: SIGTERM to its group, SIGKILL
// after stopGrace or on a second signal) and returns warnings about
// processes that did not stop cleanly.
func (s *supervisor) stopAll() []string {
	s.mu.Lock()
	procs := s.procs
	s.procs = nil
	s.mu.Unlock()
	running := make([]bool, len(procs))
	var wg sync.WaitGroup
	for i, p := range procs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			running[i] = p.stop(s.hurry)
		}()
	}
	wg.Wait()
	var warn []string
	for i, p := range procs {
		switch {
		case !running[i]:
			// Exited earlier: already reported as a failure.
		case p.killed:
			warn = append(warn, fmt.Sprintf("%s did not stop within %s of SIGTERM; killed (log: %s)", p.name, stopGrace, p.logPath))
		case p.err != nil && !isTermSignal(p.err):
			warn = append(warn, fmt.Sprintf("%s exited with %v after SIGTERM (log: %s)", p.name, p.err, p.logPath))
		}
	}
	return warn
}

// stop stops p and reports whether it was still running.
func (p *proc) stop(hurry <-chan struct{}) bool {
	if p.exited() {
		return false
	}
	pid := p.cmd.Process.Pid
	_ = syscall.Kill(-pid, syscall.SIGTERM)
	select {
	case <-p.done:
		return true
	case <-time.After(stopGrace):
	case <-hurry:
	}
	p.killed = true
	_ = syscall.Kill(-pid, syscall.SIGKILL)
	<-p.done
	return true
}

// isTermSignal reports whether err is "terminated by SIGTERM", which
// counts as a clean stop for programs that do not catch it.
func isTermSignal(err error) bool {
	ee, ok := err.(*exec.ExitError)
	if !ok {
		return false
	}
	ws, ok := ee.Sys().(syscall.WaitStatus)
	return ok && ws.Signaled() && ws.Signal() == syscall.SIGTERM
}

// command runs argv to completion in its own process group and returns
// its stdout and stderr. When ctx ends the group gets SIGTERM, and SIGKILL
// 5s later.
func command(ctx context.Context, argv ...string) (stdout, stderr []byte, err error) {
	var out, errb bytes.Buffer
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = &out, &errb
	cmd.Env = childEnv()
	cmd.SysProcAttr = sysProcAttr()
	var (
		mu     sync.Mutex
		exited bool
	)
	cmd.Cancel = func() error {
		pid := cmd.Process.Pid
		_ = syscall.Kill(-pid, syscall.SIGTERM)
		time.AfterFunc(5*time.Second, func() {
			mu.Lock()
			defer mu.Unlock()
			if !exited {
				_ = syscall.Kill(-pid, syscall.SIGKILL)
			}
		})
		return nil
	}
	cmd.WaitDelay = 10 * time.Second
	err = cmd.Run()
	mu.Lock()
	exited = true
	mu.Unlock()
	if err == nil && ctx.Err() != nil {
		err = ctx.Err()
	}
	return out.Bytes(), errb.Bytes(), err
}

// childEnv is the environment of every child: ours without SHEEPDOG_*
// variables, which would silently change sheepdog's flags.
func childEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "SHEEPDOG_") {
			env = append(env, kv)
		}
	}
	return env
}

// freePorts returns n distinct free TCP ports on 127.0.0.1, found by
// listening on port 0 (all listeners are held until all are found).
func freePorts(n int) ([]int, error) {
	var ports []int
	for i := 0; i < n; i++ {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("finding a free port: %w", err)
		}
		defer l.Close()
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// cpuTicks returns the CPU time (user+system, in clock ticks) used so far
// by the processes, from /proc/PID/stat; exited processes count as 0.
func cpuTicks(procs []*proc) int64 {
	var sum int64
	for _, p := range procs {
		if p.exited() {
			continue
		}
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", p.cmd.Process.Pid))
		if err != nil {
			continue
		}
		// Fields after "(comm)": state ppid ... utime(11) stime(12).
		s := string(b)
		f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
		if len(f) > 12 {
			u, _ := strconv.ParseInt(f[11], 10, 64)
			st, _ := strconv.ParseInt(f[12], 10, 64)
			sum += u + st
		}
	}
	return sum
}

// Settling: after sync(2), the processes must use at most their idle CPU
// (measured by calibrateIdle) plus idleMargin clock ticks (1/100 s each)
// in one idleWindow, for at most settleMax. A sheepdog cluster is never
// quite idle (timers and heartbeats), hence the calibration.
const (
	idleWindow = 500 * time.Millisecond
	idleMargin = 3 // 30ms of CPU per 500ms: 6% of one CPU above idle
	settleMax  = 20 * time.Second
)

// calibrateIdle returns the CPU ticks procs use per idleWindow when
// nothing happens: the median over a few windows after a sync.
func calibrateIdle(ctx context.Context, procs []*proc) int64 {
	syscall.Sync()
	var v []float64
	for i := 0; i < 5; i++ {
		before := cpuTicks(procs)
		select {
		case <-ctx.Done():
			return 0
		case <-time.After(idleWindow):
		}
		v = append(v, float64(cpuTicks(procs)-before))
	}
	return int64(median(v))
}

// settle flushes dirty data (sync) and waits until procs are back to their
// idle CPU use. It returns the time the sync took, the total time, and
// whether procs became idle within settleMax.
func settle(ctx context.Context, procs []*proc, idle int64) (syncTime, total time.Duration, ok bool) {
	t0 := time.Now()
	syscall.Sync()
	syncTime = time.Since(t0)
	for time.Since(t0) < settleMax {
		before := cpuTicks(procs)
		select {
		case <-ctx.Done():
			return syncTime, time.Since(t0), false
		case <-time.After(idleWindow):
		}
		if cpuTicks(procs)-before <= idle+idleMargin {
			return syncTime, time.Since(t0), true
		}
	}
	return syncTime, time.Since(t0), false
}

// tail returns the last n lines of a file.
func tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Sprintf("(%v)\n", err)
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n") + "\n"
}
