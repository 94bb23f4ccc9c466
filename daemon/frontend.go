package daemon

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/sheepdog-go/sheepdog/core"
	"github.com/sheepdog-go/sheepdog/nbd"
)

// ErrStopped is returned for requests made while the daemon stops.
var ErrStopped = errors.New("daemon: stopping")

// Do submits a request to the node and waits for its reply. The reply's
// Code carries the outcome; the error is only for a daemon that stops or
// a cancelled ctx.
func (d *Daemon) Do(ctx context.Context, r *core.Request) (core.Reply, error) {
	ch := make(chan core.Reply, 1)
	d.clients.Add(1)
	defer d.clients.Add(-1)
	select {
	case d.inbox <- event{at: d.clock.now(), req: r, reply: func(rep core.Reply) { ch <- rep }}:
	case <-d.stopped:
		return core.Reply{}, ErrStopped
	case <-ctx.Done():
		return core.Reply{}, ctx.Err()
	}
	d.kick()
	select {
	case rep := <-ch:
		return rep, nil
	case <-ctx.Done():
		return core.Reply{}, ctx.Err()
	}
}

// submit queues a client request without waiting for it and without
// running the node (the caller kicks it once it has queued what arrived
// together): done gets the reply, once, from the goroutine running the
// node at that moment, which it must not block. submit returns false (and
// done is not called) if the daemon stops.
func (d *Daemon) submit(r *core.Request, done func(core.Reply)) bool {
	d.clients.Add(1)
	if !d.enqueue(event{req: r, reply: func(rep core.Reply) { d.clients.Add(-1); done(rep) }}) {
		d.clients.Add(-1)
		return false
	}
	return true
}

// Query runs fn while holding the node, which it may read.
func (d *Daemon) Query(ctx context.Context, fn func(n *core.Node)) error {
	done := make(chan struct{})
	select {
	case d.inbox <- event{at: d.clock.now(), query: func(n *core.Node) { fn(n); close(done) }}:
	case <-d.stopped:
		return ErrStopped
	case <-ctx.Done():
		return ctx.Err()
	}
	d.kick()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// startFrontends starts the NBD server and the metrics endpoint; the
// returned function stops them (their in-flight requests finish).
func (d *Daemon) startFrontends(ctx context.Context, wg *sync.WaitGroup) (func(), error) {
	fctx, cancel := context.WithCancel(context.Background())
	var closers []func()
	stop := func() {
		cancel()
		for _, c := range closers {
			c()
		}
	}
	if d.cfg.NBD != "" {
		ln, err := net.Listen("tcp", d.cfg.NBD)
		if err != nil {
			cancel()
			return nil, fmt.Errorf("daemon: NBD listen on %s: %w", d.cfg.NBD, err)
		}
		srv := &nbd.Server{Backend: &backend{d: d}, Logger: d.log.With("frontend", "nbd"), TLSConfig: d.cfg.NBDTLS,
			Refused: func(reason string) { d.metrics.nbdRefused.WithLabelValues(reason).Inc() }}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := srv.Serve(fctx, ln); err != nil {
				d.log.Error("NBD server", "err", err)
			}
		}()
	}
	if d.cfg.Metrics != "" {
		ln, err := net.Listen("tcp", d.cfg.Metrics)
		if err != nil {
			stop()
			return nil, fmt.Errorf("daemon: metrics listen on %s: %w", d.cfg.Metrics, err)
		}
		mux := http.NewServeMux()
		mux.Handle("/metrics", d.metrics.handler())
		hs := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := hs.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				d.log.Error("metrics server", "err", err)
			}
		}()
		closers = append(closers, func() {
			sctx, c := context.WithTimeout(context.Background(), 2*time.Second)
			defer c()
			_ = hs.Shutdown(sctx)
		})
	}
	return stop, nil
}
