package net

import "errors"

var (
	// ErrClosed is returned by operations on a closed Transport or Client.
	ErrClosed = errors.New("sheepdog/net: closed")

	// ErrQueueFull is returned by Send when the peer's queue already holds
	// Config.QueueLen frames. The frame was dropped; this is the
	// back-pressure signal, and the caller retransmits later.
	ErrQueueFull = errors.New("sheepdog/net: peer queue full")

	// ErrFrameTooLarge is returned when a payload exceeds the frame size
	// limit. Received frames over the limit are reported as ErrMalformed
	// wrapping ErrFrameTooLarge.
	ErrFrameTooLarge = errors.New("sheepdog/net: frame too large")

	// ErrVersion reports a handshake between different protocol versions.
	// The wrapping error names both versions.
	ErrVersion = errors.New("sheepdog/net: protocol version mismatch")

	// ErrRejected reports a handshake the remote side refused for a
	// reason other than the version (for example a role it does not
	// serve). The wrapping error carries the remote's reason.
	ErrRejected = errors.New("sheepdog/net: handshake rejected")

	// ErrWrongNode reports that the node answering at a peer's address is
	// not the node the frames are meant for.
	ErrWrongNode = errors.New("sheepdog/net: wrong node at address")

	// ErrMalformed reports input that violates the wire format: bad
	// magic, unknown type or flags, oversized length, bad CRC, truncation.
	// The connection it arrived on is closed.
	ErrMalformed = errors.New("sheepdog/net: malformed input")
)

// RemoteError is the error a Client's Call returns when the server's
// request handler failed. Its text is exactly the handler's error text.
type RemoteError struct {
	Msg string
}

func (e *RemoteError) Error() string { return e.Msg }
