package main

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// target is one NBD server under test.
type target struct {
	Name     string   `json:"name"`     // baseline, 3-node, 1-node
	URI      string   `json:"uri"`      // what fio attaches to
	Command  []string `json:"command"`  // how it was started (first process)
	Settings string   `json:"settings"` // one-line description for the report
	procs    []*proc
	bin      string // sheepdog clusters: the binary and node 1's admin address
	admin    string
	tlsDir   string // a cluster under TLS: the client directory of its admin commands and fio
	nbdAddr  string // the NBD address fio attaches to
	// The baseline's fresh phase: a second qemu-nbd serving freshFile.
	freshFile string
	freshAddr string
}

// cli runs an admin command of the cluster t (with its client
// certificate when it is under TLS).
func (t *target) cli(ctx context.Context, args ...string) ([]byte, error) {
	if t.tlsDir != "" {
		args = append(args, "--tls-dir", t.tlsDir)
	}
	return admin(ctx, t.bin, args...)
}

// libnbdCertificates returns uri without its tls-certificates query, and
// a function that wraps a command (fio) so that libnbd finds the
// certificates of that query anyway. fio's nbd engine calls
// nbd_connect_uri without nbd_set_uri_allow_local_file, which refuses the
// query ("local file access (tls-certificates) is not allowed"), so libnbd
// is left to its default directory: $HOME/.pki/libnbd, or for root
// /etc/pki/libnbd. A non-root command gets a HOME whose .pki/libnbd is the
// certificates; root's runs in a private mount namespace (unshare) with an
// overlay on /etc that adds pki/libnbd, so the host's /etc is untouched.
// A uri without the query comes back as it is, with an identity wrapper.
func libnbdCertificates(uri string) (string, func([]string) []string, error) {
	none := func(argv []string) []string { return argv }
	base, query, ok := strings.Cut(uri, "?")
	if !ok {
		return uri, none, nil
	}
	vals, err := url.ParseQuery(query)
	if err != nil {
		return "", nil, fmt.Errorf("uri %s: %w", uri, err)
	}
	dir := vals.Get("tls-certificates")
	if dir == "" {
		return uri, none, nil
	}
	vals.Del("tls-certificates")
	if q := vals.Encode(); q != "" {
		base += "?" + q
	}
	root := filepath.Join(filepath.Dir(dir), "libnbd-default")
	if os.Geteuid() != 0 {
		home := filepath.Join(root, "home")
		link := filepath.Join(home, ".pki", "libnbd")
		if _, err := os.Lstat(link); err != nil {
			if err := os.MkdirAll(filepath.Dir(link), 0o700); err != nil {
				return "", nil, fmt.Errorf("libnbd's certificate directory: %w", err)
			}
			if err := os.Symlink(dir, link); err != nil {
				return "", nil, fmt.Errorf("libnbd's certificate directory: %w", err)
			}
		}
		return base, func(argv []string) []string {
			return append([]string{"env", "HOME=" + home}, argv...)
		}, nil
	}
	upper, work := filepath.Join(root, "etc"), filepath.Join(root, "work")
	link := filepath.Join(upper, "pki", "libnbd")
	if _, err := os.Lstat(link); err != nil {
		for _, d := range []string{filepath.Dir(link), work} {
			if err := os.MkdirAll(d, 0o700); err != nil {
				return "", nil, fmt.Errorf("libnbd's certificate directory: %w", err)
			}
		}
		if err := os.Symlink(dir, link); err != nil {
			return "", nil, fmt.Errorf("libnbd's certificate directory: %w", err)
		}
	}
	return base, func(argv []string) []string {
		return append([]string{"unshare", "--mount", "--propagation", "private", "sh", "-c",
			`mount -t overlay overlay -o "lowerdir=/etc,upperdir=$1,workdir=$2" /etc && shift 2 && exec "$@"`,
			"sh", upper, work}, argv...)
	}, nil
}

// makeCerts makes a CA in dir, a node certificate for 127.0.0.1 for each
// of nodes (dir/NODE) and a client certificate (dir/client), with bin's
// certs commands, and returns the client directory.
func makeCerts(ctx context.Context, bin, dir string, nodes []string) (string, error) {
	if _, err := admin(ctx, bin, "certs", "init", "--dir", dir); err != nil {
		return "", err
	}
	for _, n := range nodes {
		if _, err := admin(ctx, bin, "certs", "node", "--dir", dir, "--name", n, "--host", "127.0.0.1"); err != nil {
			return "", err
		}
	}
	if _, err := admin(ctx, bin, "certs", "client", "--dir", dir, "--name", "client"); err != nil {
		return "", err
	}
	return filepath.Join(dir, "client"), nil
}

// baselineFlags are qemu-nbd's settings for the baseline, besides the
// address, the export name and the file.
var baselineFlags = []string{
	"--format=raw",
	"--cache=writeback",   // host page cache; NBD FLUSH is fdatasync (as sheepdog's journal)
	"--aio=threads",       // qemu-nbd's default, stated explicitly
	"--discard=ignore",    // fio sends no trims; keep the file layout fixed
	"--detect-zeroes=off", // write what fio writes
	"--shared=1",          // one client, like a sheepdog VDI
	"--persistent",        // keep serving after each fio run disconnects
}

// startBaseline serves a sparse raw file of cfg.size with qemu-nbd, and
// for the fresh phase a second one of cfg.cliSize with another qemu-nbd
// (fresh.go empties it before every use).
func startBaseline(sup *supervisor, cfg *config, dir, logDir string) (*target, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	t := &target{Name: "baseline"}
	addr, argv, err := serveFile(sup, cfg, t, "base", filepath.Join(dir, "base.raw"), cfg.size, logDir)
	if err != nil {
		return t, err
	}
	t.URI, t.Command, t.nbdAddr = "nbd://"+addr+"/base", argv, addr
	t.Settings = fmt.Sprintf("qemu-nbd, sparse raw file of %s, %s", formatSize(cfg.size), strings.Join(baselineFlags, " "))
	t.freshFile = filepath.Join(dir, "fresh.raw")
	if t.freshAddr, _, err = serveFile(sup, cfg, t, "fresh", t.freshFile, cfg.cliSize, logDir); err != nil {
		return t, err
	}
	t.Settings += fmt.Sprintf("; fresh phase: another qemu-nbd on a sparse file of %s, emptied before each use", formatSize(cfg.cliSize))
	return t, nil
}

// serveFile creates a sparse file of size and serves it with qemu-nbd as
// export name, adding the process to t; it returns the address and the
// command line.
func serveFile(sup *supervisor, cfg *config, t *target, name, file string, size int64, logDir string) (string, []string, error) {
	if err := emptyFile(file, size); err != nil {
		return "", nil, err
	}
	ports, err := freePorts(1)
	if err != nil {
		return "", nil, err
	}
	addr := fmt.Sprintf("127.0.0.1:%d", ports[0])
	argv := append([]string{cfg.qemuNBD, "--bind=127.0.0.1", fmt.Sprintf("--port=%d", ports[0]), "--export-name=" + name}, baselineFlags...)
	argv = append(argv, file)
	p, err := sup.start("baseline/qemu-nbd-"+name, filepath.Join(logDir, "baseline-qemu-nbd-"+name+".log"), argv...)
	if err != nil {
		return "", nil, err
	}
	t.procs = append(t.procs, p)
	err = poll(sup.ctx, 10*time.Second, t.procs, "qemu-nbd to serve NBD on "+addr, func() error {
		return nbdProbe(addr)
	})
	return addr, argv, err
}

// emptyFile makes file a hole of size bytes: created, or truncated to 0
// and back, which frees its blocks and drops its cached pages, so a
// qemu-nbd serving it meets never-written space again.
func emptyFile(file string, size int64) error {
	f, err := os.OpenFile(file, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return err
	}
	err = f.Truncate(0)
	if err == nil {
		err = f.Truncate(size)
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("emptying %s: %w", file, err)
	}
	return nil
}

// uriOf is the NBD URI of the export name at addr on t: nbds:// with the
// client certificate when t is under TLS.
func (t *target) uriOf(addr, name string) string {
	if t.tlsDir != "" {
		return "nbds://" + addr + "/" + name + "?tls-certificates=" + t.tlsDir
	}
	return "nbd://" + addr + "/" + name
}

// qemuImg is the qemu-img convert command line that copies file into the
// export name at addr (in) or the export to file (out), with the
// client certificate as a tls-creds-x509 object when t is under TLS
// (qemu-img takes no certificates in an nbds:// URI).
func (t *target) qemuImg(in bool, addr, name, file string) []string {
	if t.tlsDir == "" {
		uri := t.uriOf(addr, name)
		if in {
			return []string{"qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", file, uri}
		}
		return []string{"qemu-img", "convert", "-f", "raw", "-O", "raw", uri, file}
	}
	host, port, _ := net.SplitHostPort(addr)
	obj := "tls-creds-x509,id=tls0,endpoint=client,dir=" + t.tlsDir
	opts := fmt.Sprintf("driver=nbd,host=%s,port=%s,export=%s,tls-creds=tls0", host, port, name)
	if in {
		return []string{"qemu-img", "convert", "-n", "--object", obj, "-f", "raw", file, "--target-image-opts", opts}
	}
	return []string{"qemu-img", "convert", "--object", obj, "--image-opts", opts, "-O", "raw", file}
}

// nbdProbe checks that addr greets like an NBD newstyle server, then ends
// the session politely (NBD_OPT_ABORT), so the server logs no error.
func nbdProbe(addr string) error {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(2 * time.Second))
	greeting := make([]byte, 18) // "NBDMAGIC" "IHAVEOPT" handshake flags
	if _, err := io.ReadFull(c, greeting); err != nil {
		return fmt.Errorf("reading NBD greeting: %w", err)
	}
	if string(greeting[:16]) != "NBDMAGICIHAVEOPT" {
		return fmt.Errorf("%s is not an NBD newstyle server (greeting %q)", addr, greeting[:16])
	}
	msg := binary.BigEndian.AppendUint32(nil, 1) // client flags: fixed newstyle
	msg = append(msg, "IHAVEOPT"...)
	msg = binary.BigEndian.AppendUint32(msg, 2) // NBD_OPT_ABORT
	msg = binary.BigEndian.AppendUint32(msg, 0) // no data
	if _, err := c.Write(msg); err != nil {
		return err
	}
	_, _ = io.ReadFull(c, make([]byte, 20)) // the server's ACK, if any
	return nil
}

// startCluster starts a sheepdog cluster of n nodes running bin, formats
// it with the given number of copies and creates the VDI "bench" of
// cfg.size. With tls, every peer, admin and NBD connection is mutual TLS
// with certificates made in dir/tls, and fio connects with nbds://.
func startCluster(sup *supervisor, cfg *config, bin, name string, n, copies int, tls bool, dir, logDir string) (*target, error) {
	ports, err := freePorts(2 * n)
	if err != nil {
		return nil, err
	}
	t := &target{Name: name, bin: bin}
	if tls {
		var nodes []string
		for i := 0; i < n; i++ {
			nodes = append(nodes, fmt.Sprintf("n%d", i+1))
		}
		if t.tlsDir, err = makeCerts(sup.ctx, bin, filepath.Join(dir, "tls"), nodes); err != nil {
			return nil, err
		}
	}
	listen := make([]string, n)
	for i := 0; i < n; i++ {
		listen[i] = fmt.Sprintf("127.0.0.1:%d", ports[2*i])
		nbdAddr := fmt.Sprintf("127.0.0.1:%d", ports[2*i+1])
		argv := []string{bin, "sheep",
			"--dir", filepath.Join(dir, fmt.Sprintf("n%d", i+1)),
			"--listen", listen[i], "--nbd", nbdAddr, "--log-level", cfg.logLevel}
		if i > 0 {
			argv = append(argv, "--join", listen[0])
		}
		if tls {
			argv = append(argv, "--tls-dir", filepath.Join(dir, "tls", fmt.Sprintf("n%d", i+1)))
		}
		node := fmt.Sprintf("%s/n%d", name, i+1)
		p, err := sup.start(node, filepath.Join(logDir, strings.ReplaceAll(node, "/", "-")+".log"), argv...)
		if err != nil {
			return t, err
		}
		t.procs = append(t.procs, p)
		if i == 0 {
			t.nbdAddr = nbdAddr
			t.URI = t.uriOf(nbdAddr, "bench")
			t.admin = listen[0]
			t.Command = argv
			// The others join through node 1: wait until it answers.
			if err := waitMembers(sup.ctx, bin, t, listen[0], 1); err != nil {
				return t, err
			}
		}
	}
	for _, a := range listen {
		if err := waitMembers(sup.ctx, bin, t, a, n); err != nil {
			return t, err
		}
	}
	// Format, then create the VDI; both may fail for a moment while the
	// cluster settles, so each is retried briefly.
	err = poll(sup.ctx, 15*time.Second, t.procs, fmt.Sprintf("cluster format --copies %d", copies), func() error {
		_, err := t.cli(sup.ctx, "cluster", "format", "-a", listen[0], "--copies", fmt.Sprint(copies))
		return err
	})
	if err != nil {
		return t, err
	}
	err = poll(sup.ctx, 15*time.Second, t.procs, "cluster info to say formatted", func() error {
		out, err := t.cli(sup.ctx, "cluster", "info", "-a", listen[0], "--json")
		if err != nil {
			return err
		}
		var info struct {
			Formatted bool `json:"formatted"`
			Copies    int  `json:"copies"`
		}
		if err := json.Unmarshal(out, &info); err != nil {
			return fmt.Errorf("cluster info --json: %w", err)
		}
		if !info.Formatted || info.Copies != copies {
			return fmt.Errorf("formatted=%v copies=%d", info.Formatted, info.Copies)
		}
		return nil
	})
	if err != nil {
		return t, err
	}
	err = poll(sup.ctx, 15*time.Second, t.procs, "vdi create bench "+formatSize(cfg.size), func() error {
		_, err := t.cli(sup.ctx, "vdi", "create", "-a", listen[0], "bench", formatSize(cfg.size))
		return err
	})
	if err != nil {
		return t, err
	}
	t.Settings = fmt.Sprintf("%d sheep process(es), copies=%d, VDI bench of %s (thin), --log-level %s; fio attaches to node 1",
		n, copies, formatSize(cfg.size), cfg.logLevel)
	if tls {
		t.Settings += "; mutual TLS 1.3 (ECDSA P-256) on every peer, admin and NBD connection"
	}
	if bin != cfg.bin {
		t.Settings += "; binary " + bin
	}
	return t, nil
}

// waitMembers polls `node list --json` on addr until it lists n members.
func waitMembers(ctx context.Context, bin string, t *target, addr string, n int) error {
	return poll(ctx, 30*time.Second, t.procs, fmt.Sprintf("node %s to list %d member(s)", addr, n), func() error {
		out, err := t.cli(ctx, "node", "list", "-a", addr, "--json")
		if err != nil {
			return err
		}
		var members []json.RawMessage
		if err := json.Unmarshal(out, &members); err != nil {
			return fmt.Errorf("node list --json: %w", err)
		}
		if len(members) != n {
			return fmt.Errorf("%d member(s) listed", len(members))
		}
		return nil
	})
}

// admin runs one admin command with bin, the binary of the cluster it
// talks to (builds may speak different protocol versions), and returns
// its stdout; a non-zero exit becomes an error carrying the command and
// its output.
func admin(ctx context.Context, bin string, args ...string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	argv := append([]string{bin}, args...)
	out, errOut, err := command(ctx, argv...)
	if err != nil {
		msg := strings.TrimSpace(string(errOut) + " " + string(out))
		return nil, fmt.Errorf("`%s`: %w: %s", strings.Join(args, " "), err, msg)
	}
	return out, nil
}

// errExited is returned by poll when one of the processes has exited.
var errExited = errors.New("process exited")

// poll calls f every 200ms until it succeeds, the timeout passes, ctx
// ends or one of procs exits.
func poll(ctx context.Context, timeout time.Duration, procs []*proc, what string, f func() error) error {
	deadline := time.Now().Add(timeout)
	for {
		for _, p := range procs {
			if p.exited() {
				return fmt.Errorf("waiting for %s: %w: %s: %v (log: %s)", what, errExited, p.name, p.err, p.logPath)
			}
		}
		err := f()
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("waiting for %s: gave up after %s: %w", what, timeout, err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}
