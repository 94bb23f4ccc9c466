package main

import (
	"context"
	"crypto/tls"
	"flag"
	"fmt"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/sheepdog-go/sheepdog/certs"
	sdnet "github.com/sheepdog-go/sheepdog/net"
)

// The certs command, and the TLS and address checks of sheep, local and
// the admin commands.

func certsCommand() *command {
	var (
		dir, name string
		hosts     listFlag
		days      int
		force     bool
	)
	common := func(defDays int) func(fs *flag.FlagSet) {
		return func(fs *flag.FlagSet) {
			fs.StringVar(&dir, "dir", "", "the CA directory (required)")
			fs.IntVar(&days, "days", defDays, "lifetime in days")
			fs.BoolVar(&force, "force", false, "replace existing files (a renewal)")
		}
	}
	opts := func() (certs.Options, error) {
		if dir == "" {
			return certs.Options{}, usagef("--dir is required")
		}
		if days < 1 {
			return certs.Options{}, usagef("--days must be at least 1")
		}
		return certs.Options{Lifetime: time.Duration(days) * 24 * time.Hour, Force: force}, nil
	}
	return &command{
		name:  "certs",
		short: "make the cluster CA and the node and client certificates for TLS",
		long: `Every peer, admin and NBD connection of a node started with --tls-dir is
mutual TLS 1.3 with certificates of one cluster CA. 'certs init' makes the CA
in DIR; 'certs node' and 'certs client' issue certificates into DIR/NAME, a
directory that sheep --tls-dir, the admin commands' --tls-dir, QEMU's
tls-creds-x509 dir= and nbdinfo's tls-certificates= all read.`,
		subs: []*command{
			{
				name: "init", short: "create the cluster CA: DIR/ca-cert.pem, DIR/ca-key.pem",
				flags: common(int(certs.DefaultCALifetime / (24 * time.Hour))),
				run: func(ctx context.Context, e *env, args []string) error {
					if len(args) > 0 {
						return usagef("certs init takes no arguments")
					}
					o, err := opts()
					if err != nil {
						return err
					}
					ca, err := certs.InitCA(dir, o)
					if err != nil {
						return err
					}
					fmt.Fprintf(e.stdout, "cluster CA %q created in %s (valid until %s)\n", ca.Cert.Subject.CommonName, dir, ca.Cert.NotAfter.Format(time.DateOnly))
					fmt.Fprintf(e.stdout, "keep %s secret: whoever has it can issue certificates of this cluster\n", filepath.Join(dir, certs.CAKeyFile))
					fmt.Fprintf(e.stdout, "next: sheepdog certs node --dir %s --name NODE --host ADDRESS; sheepdog certs client --dir %s --name NAME\n", dir, dir)
					return nil
				},
			},
			{
				name: "node", short: "issue a node certificate into DIR/NAME (server and client halves)",
				flags: withFlags(common(int(certs.DefaultLeafLifetime/(24*time.Hour))), func(fs *flag.FlagSet) {
					fs.StringVar(&name, "name", "", "the node's name, and its directory under --dir (required)")
					fs.Var(&hosts, "host", "an IP address or DNS name the node is reached at: its --listen and --nbd hosts (repeatable, at least one)")
				}),
				run: func(ctx context.Context, e *env, args []string) error {
					if len(args) > 0 {
						return usagef("certs node takes no arguments")
					}
					o, err := opts()
					if err != nil {
						return err
					}
					if name == "" || len(hosts) == 0 {
						return usagef("certs node needs --name and at least one --host")
					}
					ca, err := certs.LoadCA(dir)
					if err != nil {
						return err
					}
					out, err := ca.IssueNode(dir, name, hosts, o)
					if err != nil {
						return err
					}
					fmt.Fprintf(e.stdout, "node certificate %q for %v written to %s\n", name, []string(hosts), out)
					fmt.Fprintf(e.stdout, "start the node with: sheepdog sheep --tls-dir %s ...\n", out)
					return nil
				},
			},
			{
				name: "client", short: "issue a client certificate into DIR/NAME (admin commands, QEMU, NBD tools)",
				flags: withFlags(common(int(certs.DefaultLeafLifetime/(24*time.Hour))), func(fs *flag.FlagSet) {
					fs.StringVar(&name, "name", "", "the client's name, and its directory under --dir (required)")
				}),
				run: func(ctx context.Context, e *env, args []string) error {
					if len(args) > 0 {
						return usagef("certs client takes no arguments")
					}
					o, err := opts()
					if err != nil {
						return err
					}
					if name == "" {
						return usagef("certs client needs --name")
					}
					ca, err := certs.LoadCA(dir)
					if err != nil {
						return err
					}
					out, err := ca.IssueClient(dir, name, o)
					if err != nil {
						return err
					}
					fmt.Fprintf(e.stdout, "client certificate %q written to %s\n", name, out)
					fmt.Fprintf(e.stdout, "admin commands: --tls-dir %s; QEMU: --object tls-creds-x509,id=tls0,dir=%s,endpoint=client; nbdinfo: 'nbds://HOST:PORT/VDI?tls-certificates=%s'\n", out, out, out)
					return nil
				},
			},
		},
	}
}

// adminTLSDir is the --tls-dir of the admin command being run.
var adminTLSDir string

var clientConfigs sync.Map // TLS directory → *tls.Config

// clientTLS is the client configuration of a TLS directory, loaded once
// per process (nil for "").
func clientTLS(dir string) (*tls.Config, error) {
	if dir == "" {
		return nil, nil
	}
	if c, ok := clientConfigs.Load(dir); ok {
		return c.(*tls.Config), nil
	}
	c, err := certs.ClientConfig(dir)
	if err != nil {
		return nil, fmt.Errorf("--tls-dir: %w", err)
	}
	clientConfigs.Store(dir, c)
	return c, nil
}

// nbdClientTLS is the TLS configuration of the CLI's NBD connections to
// addr (vdi read and write): the client certificate of --tls-dir, the
// node's certificate checked for addr's host; nil without --tls-dir.
func nbdClientTLS(addr string) (*tls.Config, error) {
	cfg, err := clientTLS(adminTLSDir)
	if cfg == nil || err != nil {
		return nil, err
	}
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		host = addr
	}
	c := cfg.Clone()
	c.ServerName = host
	return c, nil
}

// nodeTLS is what a node with TLS directory dir uses: the peer and admin
// configurations and the NBD server's.
func nodeTLS(dir string) (*sdnet.TLS, *tls.Config, error) {
	if dir == "" {
		return nil, nil, nil
	}
	s, err := certs.ServerConfig(dir)
	if err != nil {
		return nil, nil, fmt.Errorf("--tls-dir: %w", err)
	}
	c, err := certs.ClientConfig(dir)
	if err != nil {
		return nil, nil, fmt.Errorf("--tls-dir: %w (a node directory has the client half too: reissue it with sheepdog certs node --force)", err)
	}
	nbd, err := certs.ServerConfig(dir)
	if err != nil {
		return nil, nil, fmt.Errorf("--tls-dir: %w", err)
	}
	return &sdnet.TLS{Server: s, Client: c}, nbd, nil
}

// isLoopback reports whether a listen address host:port is reachable
// only from this machine: 127.0.0.0/8, ::1, localhost, or a name that
// resolves to loopback addresses only. An empty host (every interface) is
// not. addr may also be a host without a port.
func isLoopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		host = strings.Trim(addr, "[]") // a host without a port
	}
	if host == "" {
		return false
	}
	if host == "localhost" {
		return true
	}
	if ip := net.ParseIP(host); ip != nil {
		return ip.IsLoopback()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	ips, err := net.DefaultResolver.LookupIPAddr(ctx, host)
	if err != nil || len(ips) == 0 {
		return false
	}
	for _, ip := range ips {
		if !ip.IP.IsLoopback() {
			return false
		}
	}
	return true
}

// exposed is an address a command listens on, with the flag that set it.
type exposed struct{ flag, addr string }

// checkExposure refuses to run without TLS on addresses outside the
// loopback range unless --insecure: anyone who reaches such an address
// could read and overwrite every VDI, join the cluster or shut it down.
// The http listeners (metrics, profiles) have no TLS of their own; they
// may leave loopback once the node is under TLS, or with --insecure.
func checkExposure(cmd string, tlsOn, insecure bool, listeners, http []exposed) error {
	if insecure || tlsOn {
		return nil
	}
	for _, a := range listeners {
		if a.addr != "" && !isLoopback(a.addr) {
			return usagef("%s: %s %s is not a loopback address, and without --tls-dir anyone who can reach it can read and overwrite every VDI, join the cluster or shut it down. "+
				"Set up TLS (sheepdog certs init, certs node, certs client; then --tls-dir), or pass --insecure to run without it anyway", cmd, a.flag, a.addr)
		}
	}
	for _, a := range http {
		if a.addr != "" && !isLoopback(a.addr) {
			return usagef("%s: %s %s is not a loopback address, and it serves without authentication. Keep it on loopback, run the node with --tls-dir, or pass --insecure", cmd, a.flag, a.addr)
		}
	}
	return nil
}
