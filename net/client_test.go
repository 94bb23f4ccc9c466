package net

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// adminServer is an OnRequest with a few behaviours picked by the
// request's prefix.
type adminServer struct {
	started chan string   // receives the payload of each "block" request
	release chan struct{} // unblocks "block" requests
	ctxDone chan struct{} // a "block" request saw its context cancelled
}

func newAdminServer() *adminServer {
	return &adminServer{
		started: make(chan string, 16),
		release: make(chan struct{}),
		ctxDone: make(chan struct{}, 16),
	}
}

func (s *adminServer) handle(ctx context.Context, p []byte) ([]byte, error) {
	cmd, arg, _ := strings.Cut(string(p), ":")
	switch cmd {
	case "echo":
		return p, nil
	case "fail":
		return nil, errors.New(arg)
	case "big":
		return bytes.Repeat([]byte{0x5a}, 4<<20), nil
	case "empty":
		return nil, nil
	case "block":
		s.started <- arg
		select {
		case <-s.release:
			return []byte("released:" + arg), nil
		case <-ctx.Done():
			s.ctxDone <- struct{}{}
			return nil, ctx.Err()
		}
	}
	return nil, fmt.Errorf("unknown command %q", cmd)
}

func newAdmin(t *testing.T) (*Transport, *Client, *adminServer) {
	t.Helper()
	s := newAdminServer()
	tr := newTransport(t, Config{NodeID: 5, OnRequest: s.handle})
	c, err := Dial(context.Background(), tr.Addr())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return tr, c, s
}

func TestCall(t *testing.T) {
	checkGoroutines(t)
	_, c, _ := newAdmin(t)
	tests := []struct {
		req     string
		want    []byte
		wantErr string // exact remote error text
	}{
		{req: "echo:hello", want: []byte("echo:hello")},
		{req: "empty", want: []byte{}},
		{req: "big", want: bytes.Repeat([]byte{0x5a}, 4<<20)},
		{req: "fail:no such vdi: alice", wantErr: "no such vdi: alice"},
		{req: "bogus", wantErr: `unknown command "bogus"`},
	}
	for _, tt := range tests {
		t.Run(tt.req, func(t *testing.T) {
			got, err := c.Call(context.Background(), []byte(tt.req))
			if tt.wantErr != "" {
				var re *RemoteError
				if !errors.As(err, &re) || err.Error() != tt.wantErr {
					t.Fatalf("err = %v, want RemoteError %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, tt.want) {
				t.Errorf("response of %d bytes, want %d bytes (%.20q)", len(got), len(tt.want), tt.want)
			}
		})
	}
}

func TestConcurrentCalls(t *testing.T) {
	checkGoroutines(t)
	_, c, _ := newAdmin(t)
	const goroutines, calls = 32, 50
	type result struct{ Resp, Err string }
	got := make([][]result, goroutines)
	want := make([][]result, goroutines)
	var wg sync.WaitGroup
	for g := range goroutines {
		for i := range calls {
			if i%5 == 0 {
				want[g] = append(want[g], result{Err: fmt.Sprintf("err %d/%d", g, i)})
			} else {
				want[g] = append(want[g], result{Resp: fmt.Sprintf("echo:%d/%d", g, i)})
			}
		}
		wg.Go(func() {
			for i := range calls {
				req := fmt.Sprintf("echo:%d/%d", g, i)
				if i%5 == 0 {
					req = fmt.Sprintf("fail:err %d/%d", g, i)
				}
				resp, err := c.Call(context.Background(), []byte(req))
				r := result{Resp: string(resp)}
				if err != nil {
					r.Err = err.Error()
				}
				got[g] = append(got[g], r)
			}
		})
	}
	wg.Wait()
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("results (-want +got):\n%s", diff)
	}
}

func TestCallCancellation(t *testing.T) {
	checkGoroutines(t)
	tr, c, s := newAdmin(t)

	t.Run("cancel", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		go func() {
			<-s.started
			cancel()
		}()
		if _, err := c.Call(ctx, []byte("block:1")); !errors.Is(err, context.Canceled) {
			t.Fatalf("err = %v, want context.Canceled", err)
		}
	})
	t.Run("already cancelled", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		if _, err := c.Call(ctx, []byte("echo:x")); !errors.Is(err, context.Canceled) {
			t.Fatalf("err = %v, want context.Canceled", err)
		}
	})
	t.Run("deadline", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
		defer cancel()
		if _, err := c.Call(ctx, []byte("block:2")); !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("err = %v, want context.DeadlineExceeded", err)
		}
		<-s.started
	})
	// The abandoned requests finish late; their responses are discarded
	// and the client keeps working.
	close(s.release)
	waitFor(t, "the abandoned requests to finish", func() bool { return tr.Stats().Requests == 2 })
	got, err := c.Call(context.Background(), []byte("echo:after"))
	if err != nil || string(got) != "echo:after" {
		t.Fatalf("Call after cancellations = %q, %v", got, err)
	}
}

func TestClientCloseCancelsHandler(t *testing.T) {
	checkGoroutines(t)
	_, c, s := newAdmin(t)
	errc := make(chan error, 1)
	go func() {
		_, err := c.Call(context.Background(), []byte("block:x"))
		errc <- err
	}()
	<-s.started
	c.Close()
	if err := <-errc; !errors.Is(err, ErrClosed) {
		t.Errorf("pending Call = %v, want ErrClosed", err)
	}
	<-s.ctxDone // the handler's context was cancelled
	if _, err := c.Call(context.Background(), []byte("echo:x")); !errors.Is(err, ErrClosed) {
		t.Errorf("Call after Close = %v, want ErrClosed", err)
	}
}

func TestServerCloseFailsCalls(t *testing.T) {
	checkGoroutines(t)
	tr, c, s := newAdmin(t)
	errc := make(chan error, 1)
	go func() {
		_, err := c.Call(context.Background(), []byte("block:x"))
		errc <- err
	}()
	<-s.started
	tr.Close() // cancels the handler's context and waits for it
	err := <-errc
	if err == nil || errors.Is(err, ErrClosed) {
		t.Fatalf("pending Call = %v, want a lost-connection error", err)
	}
	if _, err2 := c.Call(context.Background(), []byte("echo:x")); err2 == nil {
		t.Error("Call on a dead connection succeeded")
	}
}

func TestDialErrors(t *testing.T) {
	checkGoroutines(t)
	peerOnly := newTransport(t, Config{NodeID: 6, OnMessage: func(uint64, []byte) {}})
	_, err := Dial(context.Background(), peerOnly.Addr())
	if !errors.Is(err, ErrRejected) || !strings.Contains(err.Error(), "admin requests not served") {
		t.Errorf("Dial to a node without OnRequest = %v, want ErrRejected with reason", err)
	}
	// Nothing listens on a closed transport's port.
	closed := newTransport(t, Config{NodeID: 7})
	addr := closed.Addr()
	closed.Close()
	if _, err := Dial(context.Background(), addr); err == nil {
		t.Error("Dial to a closed port succeeded")
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := Dial(ctx, peerOnly.Addr()); !errors.Is(err, context.Canceled) {
		t.Errorf("Dial with a cancelled context = %v, want context.Canceled", err)
	}
}

func TestCallTooLarge(t *testing.T) {
	checkGoroutines(t)
	_, c, _ := newAdmin(t)
	if _, err := c.Call(context.Background(), make([]byte, DefaultMaxFrame+1)); !errors.Is(err, ErrFrameTooLarge) {
		t.Errorf("err = %v, want ErrFrameTooLarge", err)
	}
}
