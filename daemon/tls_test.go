package daemon

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sheepdog-go/sheepdog/certs"
	"github.com/sheepdog-go/sheepdog/internal/freeport"
	sdnet "github.com/sheepdog-go/sheepdog/net"
)

// nodeTLS issues a node certificate of ca for 127.0.0.1 and returns the
// peer configurations made from it.
func nodeTLS(t *testing.T, ca *certs.CA, caDir, name string) *sdnet.TLS {
	t.Helper()
	dir, err := ca.IssueNode(caDir, name, []string{"127.0.0.1"}, certs.Options{})
	if err != nil {
		t.Fatal(err)
	}
	s, err := certs.ServerConfig(dir)
	if err != nil {
		t.Fatal(err)
	}
	c, err := certs.ClientConfig(dir)
	if err != nil {
		t.Fatal(err)
	}
	return &sdnet.TLS{Server: s, Client: c}
}

// TestTLSCluster: nodes with certificates of the cluster CA form a
// cluster over mutual TLS and answer each other's admin requests (node
// recovery fans out to every member); a node with a certificate of
// another CA never joins, and the refusals show in the metrics.
func TestTLSCluster(t *testing.T) {
	caDir, rogueDir := t.TempDir(), t.TempDir()
	ca, err := certs.InitCA(caDir, certs.Options{})
	if err != nil {
		t.Fatal(err)
	}
	rogueCA, err := certs.InitCA(rogueDir, certs.Options{})
	if err != nil {
		t.Fatal(err)
	}
	c := &testCluster{t: t}
	dir := t.TempDir()
	add := func(tls *sdnet.TLS, join string) {
		cfg := Config{Dir: filepath.Join(dir, fmt.Sprintf("n%d", len(c.ds))), Listen: freeport.Addr(t), Logger: logger(t), TLS: tls}
		if join != "" {
			cfg.Join = []string{join}
		}
		c.cfgs = append(c.cfgs, cfg)
		c.ds, c.cancel, c.done = append(c.ds, nil), append(c.cancel, nil), append(c.done, nil)
		c.start(len(c.ds) - 1)
	}
	t.Cleanup(c.stopAll)
	add(nodeTLS(t, ca, caDir, "n0"), "")
	first := c.cfgs[0].Listen
	add(nodeTLS(t, ca, caDir, "n1"), first)
	add(nodeTLS(t, ca, caDir, "n2"), first)
	add(nodeTLS(t, rogueCA, rogueDir, "n3"), first)
	c.waitFor("3 members", func() bool {
		for _, d := range c.ds[:3] {
			if s := d.Status(); s == nil || s.Members != 3 {
				return false
			}
		}
		return true
	})

	admin, err := ca.IssueClient(caDir, "admin", certs.Options{})
	if err != nil {
		t.Fatal(err)
	}
	cc, err := certs.ClientConfig(admin)
	if err != nil {
		t.Fatal(err)
	}
	cl, err := sdnet.DialTLS(context.Background(), first, cc)
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	out, err := cl.Call(context.Background(), []byte(`{"cmd":"node.recovery"}`))
	if err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(string(out), `"addr"`); n != 3 || strings.Contains(string(out), "unreachable") {
		t.Fatalf("node.recovery over TLS: %d members: %s", n, out)
	}

	// Without a certificate, nothing is served.
	if _, err := sdnet.Dial(context.Background(), first); !errors.Is(err, sdnet.ErrTLSRequired) {
		t.Fatalf("plain admin dial: %v", err)
	}
	// The node of another CA stays out, for a while at least.
	time.Sleep(time.Second)
	if s := c.ds[0].Status(); s.Members != 3 {
		t.Fatalf("%d members with a node of another CA", s.Members)
	}
	if s := c.ds[3].Status(); s != nil && s.Members > 1 {
		t.Fatalf("the node of another CA sees %d members", s.Members)
	}
	m := c.ds[0].metrics
	refused := func(reason string) float64 {
		mfs, err := m.reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		for _, mf := range mfs {
			if mf.GetName() != "sheepdog_tls_handshake_refused_total" {
				continue
			}
			for _, mm := range mf.GetMetric() {
				if mm.GetLabel()[0].GetValue() == reason {
					return mm.GetCounter().GetValue()
				}
			}
		}
		t.Fatalf("no sheepdog_tls_handshake_refused_total{reason=%q}", reason)
		return 0
	}
	if refused(sdnet.RefusedNotTLS) < 1 {
		t.Errorf("the plain dial was not counted as not_tls")
	}
	// The rogue node verifies node 0's certificate first and refuses it,
	// so node 0 sees its own certificate refused.
	if refused(sdnet.RefusedOther) < 1 {
		t.Errorf("the rogue node's refusals were not counted")
	}
	if refused(sdnet.RefusedNoCert) != 0 {
		t.Errorf("no_cert counted without a cause")
	}
}
