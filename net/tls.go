package net

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	gonet "net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/sheepdog-go/sheepdog/internal/cork"
)

// TLS puts a Transport's connections under mutual TLS: Server for the
// connections it accepts (peers and admin clients), Client for the peer
// connections it dials. Either may be nil (that side stays plain TCP).
// Server should require and verify client certificates (ClientAuth
// tls.RequireAndVerifyClientCert, ClientCAs the cluster CA) and allow
// TLS 1.3 only; Client needs the cluster CA as RootCAs and a client
// certificate. The dialer sets ServerName to the host of each address
// it dials, so the listener's certificate must name the host its peers
// know it by. Package certs builds both from a directory.
type TLS struct {
	Server *tls.Config
	Client *tls.Config
}

// DefaultMaxConnsPerIP is the default of Config.MaxConnsPerIP.
const DefaultMaxConnsPerIP = 64

// statusTLS is the ack status a TLS listener sends, in plain text, to a
// dialer that sent a plain hello: TLS is required.
const statusTLS uint8 = 3

// ErrTLSRequired is what a dialer without TLS gets from a node that
// requires it (wrapped in a *TLSError carrying the node's reason).
var ErrTLSRequired = errors.New("sheepdog/net: TLS required")

// TLSError is a connection refused or broken off at the TLS handshake,
// with what it means in the user's terms.
type TLSError struct {
	Addr   string // the address dialed
	Reason string // what went wrong and what to do about it
	Err    error  // the underlying error (crypto/tls, x509, or ErrTLSRequired)
}

func (e *TLSError) Error() string {
	return fmt.Sprintf("tls: %s: %s (%v)", e.Addr, e.Reason, e.Err)
}

func (e *TLSError) Unwrap() error { return e.Err }

// Reasons a TLS handshake was refused, the keys of Stats.TLSRefused.
const (
	RefusedNoCert     = "no_cert"     // the client showed no certificate
	RefusedUnknownCA  = "unknown_ca"  // its certificate is not signed by a CA we trust
	RefusedBadCert    = "bad_cert"    // its certificate is signed but not valid (expired, wrong usage)
	RefusedBadVersion = "bad_version" // it does not speak TLS 1.3
	RefusedNotTLS     = "not_tls"     // it did not start TLS at all (a plain sheepdog, a port scan)
	RefusedTimeout    = "timeout"     // no handshake within Config.HandshakeTimeout
	RefusedOther      = "other"       // anything else, such as a client refusing our certificate
)

// TLSRefusalReasons lists every reason, in a fixed order.
var TLSRefusalReasons = []string{RefusedNoCert, RefusedUnknownCA, RefusedBadCert, RefusedBadVersion, RefusedNotTLS, RefusedTimeout, RefusedOther}

// refusalCounters counts refused handshakes by reason.
type refusalCounters [7]atomic.Uint64

func (r *refusalCounters) add(reason string) {
	for i, name := range TLSRefusalReasons {
		if name == reason {
			r[i].Add(1)
			return
		}
	}
}

func (r *refusalCounters) snapshot() map[string]uint64 {
	m := make(map[string]uint64, len(TLSRefusalReasons))
	for i, name := range TLSRefusalReasons {
		m[name] = r[i].Load()
	}
	return m
}

// refusal classifies a failed server handshake and explains it.
func refusal(err error) (reason, why string) {
	var rh tls.RecordHeaderError
	var ua x509.UnknownAuthorityError
	var cv *tls.CertificateVerificationError
	msg := err.Error()
	switch {
	case errors.Is(err, os.ErrDeadlineExceeded):
		return RefusedTimeout, "no TLS handshake within the handshake timeout"
	case errors.As(err, &rh):
		return RefusedNotTLS, "the client did not start TLS (a sheepdog command or node without --tls-dir?)"
	case errors.As(err, &ua):
		return RefusedUnknownCA, "the client's certificate is not signed by the cluster CA"
	case errors.As(err, &cv):
		return RefusedBadCert, "the client's certificate is not valid (expired, not yet valid, or not for client authentication)"
	case strings.Contains(msg, "didn't provide a certificate"):
		return RefusedNoCert, "the client showed no certificate"
	case strings.Contains(msg, "unsupported versions") || strings.Contains(msg, "protocol version"):
		return RefusedBadVersion, "the client does not speak TLS 1.3"
	case strings.Contains(msg, "remote error: tls: bad certificate") || strings.Contains(msg, "remote error: tls: unknown certificate authority"):
		return RefusedOther, "the client refused this node's certificate (is it of another cluster's CA, or without this node's address?)"
	}
	return RefusedOther, "TLS handshake failed"
}

// describeTLS turns an error of a TLS dial (the handshake, or the hello
// exchange after it, where TLS 1.3 reports a refused client certificate)
// into a *TLSError that says what went wrong. Errors that have nothing to
// do with TLS come back unchanged.
func describeTLS(addr string, err error) error {
	var te *TLSError
	if err == nil || errors.As(err, &te) {
		return err
	}
	var ua x509.UnknownAuthorityError
	var he x509.HostnameError
	var ci x509.CertificateInvalidError
	msg := err.Error()
	reason := ""
	switch {
	case errors.As(err, &ua):
		reason = "the node's certificate is not signed by the CA in ca-cert.pem of --tls-dir: it is of another cluster"
	case errors.As(err, &he):
		reason = fmt.Sprintf("the node's certificate is not valid for %s (%v): reissue it with --host %s", he.Host, err, he.Host)
	case errors.As(err, &ci):
		reason = "the node's certificate is not valid (expired, not yet valid, or not for server authentication)"
	case strings.Contains(msg, "tls: certificate required"):
		reason = "the node requires a client certificate from the cluster CA; pass --tls-dir with client-cert.pem and client-key.pem (sheepdog certs client)"
	case strings.Contains(msg, "tls: unknown certificate authority"):
		reason = "the node refused our certificate: it is not signed by the cluster CA"
	case strings.Contains(msg, "tls: expired certificate"):
		reason = "the node refused our certificate: it has expired (renew it with sheepdog certs ... --force)"
	case strings.Contains(msg, "tls: bad certificate"):
		reason = "the node refused our certificate"
	case strings.Contains(msg, "protocol version"):
		reason = "the node and we share no TLS version (sheepdog requires TLS 1.3)"
	case errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, ErrMalformed):
		reason = "the node broke off the TLS handshake: is it running without --tls-dir?"
	case strings.Contains(msg, "tls:"):
		reason = "TLS handshake failed"
	default:
		return err
	}
	return &TLSError{Addr: addr, Reason: reason, Err: err}
}

// tlsConn is a TLS connection whose Close closes the socket at once,
// without the close_notify alert, which would wait (up to 5 s) for room
// in the socket of a peer that stopped reading; callers close under
// locks and on shutdown.
// Its writes go out in one system call however many records they take
// (cork).
type tlsConn struct {
	*tls.Conn
	ck *cork.Conn
}

func (c tlsConn) Close() error { return c.NetConn().Close() }

func (c tlsConn) Write(p []byte) (int, error) {
	c.ck.Hold()
	n, err := c.Conn.Write(p)
	if rerr := c.ck.Release(); err == nil && rerr != nil {
		err = rerr
	}
	return n, err
}

// clientTLS runs the client side of a TLS handshake on c for addr, bounded
// by timeout and ctx. It closes c on failure.
func clientTLS(ctx context.Context, c gonet.Conn, addr string, cfg *tls.Config, timeout time.Duration) (gonet.Conn, error) {
	cc := cfg
	if cc.ServerName == "" {
		host, _, err := gonet.SplitHostPort(addr)
		if err != nil {
			host = addr
		}
		cc = cfg.Clone()
		cc.ServerName = host
	}
	deadline := time.Now().Add(timeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	c.SetDeadline(deadline)
	ck := cork.New(c)
	tc := tls.Client(ck, cc)
	if err := tc.HandshakeContext(ctx); err != nil {
		c.Close()
		return nil, describeTLS(addr, err)
	}
	c.SetDeadline(time.Time{})
	return tlsConn{tc, ck}, nil
}

// serverTLS runs the server side of a TLS handshake on an accepted
// connection. A refused handshake is counted by reason and logged; a
// dialer that sent a plain sheepdog hello is told, in plain text, that
// TLS is required. The caller closes c on failure.
func (t *Transport) serverTLS(c gonet.Conn, remote string) (gonet.Conn, error) {
	c.SetDeadline(time.Now().Add(t.cfg.HandshakeTimeout))
	ck := cork.New(c)
	tc := tls.Server(ck, t.cfg.TLS.Server)
	err := tc.HandshakeContext(t.ctx)
	if err == nil {
		c.SetDeadline(time.Time{})
		return tlsConn{tc, ck}, nil
	}
	if t.closed.Load() {
		return nil, err
	}
	reason, why := refusal(err)
	t.stats.tlsRefused.add(reason)
	var rh tls.RecordHeaderError
	if errors.As(err, &rh) && rh.Conn != nil && binary.BigEndian.Uint32(rh.RecordHeader[:4]) == handshakeMagic {
		why = "a sheepdog without --tls-dir dialed (told that TLS is required)"
		t.refusePlain(rh.Conn)
	}
	t.logRefusal(why, remote, reason, err)
	return nil, fmt.Errorf("TLS handshake refused (%s): %w", reason, err)
}

// refusePlain answers a plain hello with statusTLS, then half-closes and
// drains the connection briefly so that the answer is read rather than
// lost to a reset.
func (t *Transport) refusePlain(c gonet.Conn) {
	t.answer(c, statusTLS, "the node requires TLS with a client certificate from the cluster CA; pass --tls-dir DIR (make one with sheepdog certs client)")
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		cw.CloseWrite()
	}
	c.SetReadDeadline(time.Now().Add(time.Second))
	io.Copy(io.Discard, io.LimitReader(c, 4096))
}

// logRefusal logs a refused handshake at Warn, at most refusalLogBurst
// times a second; the rest go to Debug, so that a flood of bad
// connections cannot flood the log (the counters still count them all).
func (t *Transport) logRefusal(why, remote, reason string, err error) {
	lvl := t.refusalLog.level()
	t.log.Log(context.Background(), lvl, "TLS handshake refused: "+why, "remote", remote, "reason", reason, "err", err)
}

const refusalLogBurst = 10

type rateLog struct {
	mu     sync.Mutex
	second int64
	n      int
}

func (r *rateLog) level() slog.Level {
	now := time.Now().Unix()
	r.mu.Lock()
	defer r.mu.Unlock()
	if now != r.second {
		r.second, r.n = now, 0
	}
	r.n++
	if r.n > refusalLogBurst {
		return slog.LevelDebug
	}
	return slog.LevelWarn
}

// plainTLSClient reports whether a hello's first bytes are a TLS
// ClientHello record: a TLS dialer reached a node without TLS.
func plainTLSClient(b []byte) bool {
	return len(b) >= 3 && b[0] == 0x16 && b[1] == 3 && b[2] <= 4
}

// ipLimit counts the accepted connections of each remote IP address.
type ipLimit struct {
	mu sync.Mutex
	n  map[string]int
}

// acquire admits one more connection from ip, unless it has max.
func (l *ipLimit) acquire(ip string, max int) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.n == nil {
		l.n = make(map[string]int)
	}
	if l.n[ip] >= max {
		return false
	}
	l.n[ip]++
	return true
}

func (l *ipLimit) release(ip string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.n[ip]--; l.n[ip] <= 0 {
		delete(l.n, ip)
	}
}

// remoteIP is the IP address of a connection's remote end.
func remoteIP(c gonet.Conn) string {
	if ta, ok := c.RemoteAddr().(*gonet.TCPAddr); ok {
		return ta.IP.String()
	}
	host, _, err := gonet.SplitHostPort(c.RemoteAddr().String())
	if err != nil {
		return c.RemoteAddr().String()
	}
	return host
}
