// Package testkit holds the small helpers that the demo and the tests of
// several packages share: free loopback addresses and a log buffer.
package testkit

import (
	"bytes"
	"net"
	"sync"
	"testing"
)

// FreeAddr reserves a loopback port long enough to learn its number.
func FreeAddr() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}

// ListenAddrs returns two free loopback addresses, for a sidecar's proxy
// and admin listeners.
func ListenAddrs(t testing.TB) (listen, admin string) {
	t.Helper()
	listen, err := FreeAddr()
	if err != nil {
		t.Fatal(err)
	}
	if admin, err = FreeAddr(); err != nil {
		t.Fatal(err)
	}
	return listen, admin
}

// SyncBuffer is a bytes.Buffer safe for a logger's goroutines.
type SyncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *SyncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *SyncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// Health is the admin listener's /healthz answer.
type Health struct {
	Status string `json:"status"`
	Checks map[string]struct {
		Status string `json:"status"`
		Error  string `json:"error"`
	} `json:"checks"`
}
