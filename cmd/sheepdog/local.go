package main

import (
	"context"
	"crypto/tls"
	"flag"
	"fmt"
	"net"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/sheepdog-go/sheepdog/certs"
	"github.com/sheepdog-go/sheepdog/daemon"
)

func localCommand() *command {
	var (
		nodes, basePort, nbdPort int
		dir, host, vdiName       string
		vdiSize                  string
		copies                   int
		logLevel, pprofAddr      string
		tick                     time.Duration
		useTLS, insecure         bool
		tlsDir                   string
		tune                     tuning
		recov                    recoveryFlags
	)
	return &command{
		name:  "local",
		short: "run a whole cluster on this machine (real TCP and disk)",
		long: `Starts --nodes sheep in this process, each with its own directory under --dir,
peer port and NBD port, on loopback. On first start it formats the cluster
and creates a VDI, so an NBD export is ready for QEMU at once. Restarted with
the same --dir it brings the same cluster back.`,
		flags: func(fs *flag.FlagSet) {
			fs.IntVar(&nodes, "nodes", 3, "number of nodes")
			fs.StringVar(&dir, "dir", ".sheepdog-local", "directory for the nodes' data")
			fs.StringVar(&host, "host", "127.0.0.1", "address to listen on")
			fs.IntVar(&basePort, "port", 7000, "peer port of the first node (the others follow)")
			fs.IntVar(&nbdPort, "nbd-port", 10809, "NBD port of the first node (the others follow)")
			fs.IntVar(&copies, "copies", 3, "replicas per object when formatting")
			fs.StringVar(&vdiName, "vdi", "vm0", "VDI created on first start")
			fs.StringVar(&vdiSize, "vdi-size", "10G", "size of that VDI")
			fs.DurationVar(&tick, "tick", daemon.DefaultTick, tickUsage)
			fs.StringVar(&pprofAddr, "pprof", "", "serve Go profiling (net/http/pprof) on this address")
			fs.StringVar(&logLevel, "log-level", "warn", "debug, info, warn or error")
			fs.BoolVar(&useTLS, "tls", false, "mutual TLS everywhere, with a CA, a node and a client certificate made in DIR/tls on first start")
			fs.StringVar(&tlsDir, "tls-dir", "", "mutual TLS with this node directory (sheepdog certs node) for every node and the set-up")
			fs.BoolVar(&insecure, "insecure", false, "allow a --host outside loopback without TLS")
			tune.flags(fs)
			recov.flags(fs)
		},
		run: func(ctx context.Context, e *env, args []string) error {
			if len(args) > 0 {
				return usagef("local takes no arguments")
			}
			if nodes < 1 {
				return usagef("--nodes must be at least 1")
			}
			if err := checkTick(tick); err != nil {
				return err
			}
			var paced daemon.Config
			if err := recov.apply(&paced); err != nil {
				return err
			}
			if useTLS && tlsDir != "" {
				return usagef("local: --tls makes its own certificates; give it or --tls-dir, not both")
			}
			clientDir := tlsDir
			if useTLS {
				hosts := []string{host, "localhost"}
				if host != "127.0.0.1" {
					hosts = append(hosts, "127.0.0.1")
				}
				nodeDir, cdir, err := certs.EnsureLocal(filepath.Join(dir, "tls"), hosts, certs.Options{})
				if err != nil {
					return fmt.Errorf("local --tls: %w", err)
				}
				tlsDir, clientDir = nodeDir, cdir
			}
			if err := checkExposure("local", tlsDir != "", insecure,
				[]exposed{{"--host", host}}, []exposed{{"--pprof", pprofAddr}}); err != nil {
				return err
			}
			peerTLS, nbdServerTLS, err := nodeTLS(tlsDir)
			if err != nil {
				return err
			}
			adminTLS, err := clientTLS(clientDir)
			if err != nil {
				return err
			}
			size, err := parseSize(vdiSize)
			if err != nil {
				return usagef("--vdi-size: %v", err)
			}
			log, err := newLogger(e, logLevel)
			if err != nil {
				return err
			}
			if err := tune.apply(nodes, log); err != nil {
				return err
			}
			if err := servePprof(pprofAddr); err != nil {
				return err
			}
			first := filepath.Join(dir, "node0")
			fresh := !exists(first)
			addr := func(port, i int) string { return net.JoinHostPort(host, strconv.Itoa(port+i)) }
			var ds []*daemon.Daemon
			for i := 0; i < nodes; i++ {
				cfg := daemon.Config{
					Dir:    filepath.Join(dir, fmt.Sprintf("node%d", i)),
					Listen: addr(basePort, i),
					NBD:    addr(nbdPort, i),
					Tick:   tick,
					Logger: log,
					TLS:    peerTLS,
					NBDTLS: nbdServerTLS,

					RecoveryRate:     paced.RecoveryRate,
					RecoveryBusyRate: paced.RecoveryBusyRate,
				}
				if i > 0 {
					cfg.Join = []string{addr(basePort, 0)}
				}
				d, err := daemon.New(cfg)
				if err != nil {
					return err
				}
				ds = append(ds, d)
			}
			ctx, cancel := context.WithCancel(ctx)
			defer cancel()
			var wg sync.WaitGroup
			errs := make(chan error, nodes)
			for _, d := range ds {
				wg.Add(1)
				go func() {
					defer wg.Done()
					if err := d.Run(ctx); err != nil {
						errs <- err
						cancel()
					}
				}()
			}
			if err := setupLocal(ctx, e, ds, adminTLS, fresh, copies, vdiName, size); err != nil {
				cancel()
				wg.Wait()
				return err
			}
			fmt.Fprintf(e.stdout, "sheepdog: %d nodes running (data in %s); Ctrl-C stops them.\n\n", nodes, dir)
			if adminTLS == nil {
				fmt.Fprintf(e.stdout, "  NBD export ready:  nbd://%s/%s\n", addr(nbdPort, 0), vdiName)
				fmt.Fprintf(e.stdout, "  QEMU:              qemu-system-x86_64 -drive file=nbd://%s/%s,format=raw,cache=none ...\n", addr(nbdPort, 0), vdiName)
				fmt.Fprintf(e.stdout, "  another VDI:       sheepdog vdi create -a %s NAME 20G\n", addr(basePort, 0))
				fmt.Fprintf(e.stdout, "  state:             sheepdog node list -a %s; sheepdog vdi list -a %s\n", addr(basePort, 0), addr(basePort, 0))
			} else {
				printTLSUsage(e, clientDir, host, nbdPort, addr(basePort, 0), vdiName)
			}
			wg.Wait()
			select {
			case err := <-errs:
				return err
			default:
			}
			return nil
		},
	}
}

// setupLocal waits for every node to join, then formats the cluster and
// creates the first VDI if the cluster is new.
func setupLocal(ctx context.Context, e *env, ds []*daemon.Daemon, cfg *tls.Config, fresh bool, copies int, name string, size uint64) error {
	deadline := time.Now().Add(60 * time.Second)
	addr := ds[0].Self().Addr
	for {
		ci, err := callJSONTLS[daemon.ClusterInfo](ctx, addr, cfg, &daemon.AdminRequest{Cmd: "cluster.info"})
		if err == nil && len(ci.Nodes) == len(ds) {
			if ci.Formatted || !fresh {
				return nil
			}
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the nodes did not form a cluster within a minute (last error: %v)", err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	if _, err := callJSONTLS[map[string]string](ctx, addr, cfg, &daemon.AdminRequest{Cmd: "cluster.format", Copies: copies}); err != nil {
		return fmt.Errorf("format: %w", err)
	}
	for {
		_, err := callJSONTLS[map[string]any](ctx, addr, cfg, &daemon.AdminRequest{Cmd: "vdi.create", Name: name, Size: size})
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("create VDI %s: %w", name, err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// printTLSUsage prints how QEMU, qemu-img, nbdinfo and the admin commands
// reach a local cluster under TLS with the client certificate of dir.
func printTLSUsage(e *env, dir, host string, nbdPort int, admin, vdi string) {
	if abs, err := filepath.Abs(dir); err == nil {
		dir = abs
	}
	obj := fmt.Sprintf("--object tls-creds-x509,id=tls0,dir=%s,endpoint=client", dir)
	opts := fmt.Sprintf("driver=nbd,host=%s,port=%d,export=%s,tls-creds=tls0", host, nbdPort, vdi)
	u := fmt.Sprintf("nbds://%s/%s?tls-certificates=%s", net.JoinHostPort(host, strconv.Itoa(nbdPort)), vdi, dir)
	fmt.Fprintf(e.stdout, "  every connection is mutual TLS; the client certificate is in %s\n", dir)
	fmt.Fprintf(e.stdout, "  NBD export ready:  %s\n", u)
	fmt.Fprintf(e.stdout, "  QEMU:              qemu-system-x86_64 %s -drive %s,cache=none ...\n", obj, opts)
	fmt.Fprintf(e.stdout, "  qemu-img:          qemu-img info %s --image-opts %s\n", obj, opts)
	fmt.Fprintf(e.stdout, "  nbdinfo:           nbdinfo '%s'\n", u)
	fmt.Fprintf(e.stdout, "  another VDI:       sheepdog vdi create -a %s --tls-dir %s NAME 20G\n", admin, dir)
	fmt.Fprintf(e.stdout, "  state:             sheepdog node list -a %s --tls-dir %s\n", admin, dir)
}
