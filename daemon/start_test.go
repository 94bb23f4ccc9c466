package daemon

import (
	"context"
	"encoding/json"
	"path/filepath"
	"testing"
	"time"

	"github.com/sheepdog-go/sheepdog/internal/freeport"
	sdnet "github.com/sheepdog-go/sheepdog/net"
)

// An admin request that arrives the moment the transport listens, before
// the daemon has its first outgoing batch, waits for the node instead of
// running it half set up (the faults harness, polling a starting node,
// once crashed one with a nil batch: seed 19).
func TestAdminRequestDuringStart(t *testing.T) {
	cfg := Config{Dir: filepath.Join(t.TempDir(), "n0"), Listen: freeport.Addr(t), Logger: logger(t)}
	d, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	type answer struct {
		st  NodeStatus
		err error
	}
	answers := make(chan answer, 1)
	d.testAfterListen = func() {
		go func() {
			var a answer
			defer func() { answers <- a }()
			c, err := sdnet.Dial(ctx, cfg.Listen)
			if err != nil {
				a.err = err
				return
			}
			defer c.Close()
			req, _ := json.Marshal(&AdminRequest{Cmd: "node.info"})
			b, err := c.Call(ctx, req)
			if err != nil {
				a.err = err
				return
			}
			a.err = json.Unmarshal(b, &a.st)
		}()
		// Long enough for the request to reach the handler, which must
		// leave it to the node's loop.
		time.Sleep(200 * time.Millisecond)
	}
	done := make(chan error, 1)
	runCtx, stop := context.WithCancel(ctx)
	go func() { done <- d.Run(runCtx) }()
	a := <-answers
	stop()
	if err := <-done; err != nil {
		t.Fatalf("run: %v", err)
	}
	if a.err != nil {
		t.Fatalf("node.info during start: %v", a.err)
	}
	if a.st.ID == "" {
		t.Fatalf("node.info during start answered %+v", a.st)
	}
}
