package admin

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"sync"
	"time"
)

// A dashboard login creates a session: a random id, kept only in this
// admin server's memory (so it is bound to this listener and process), sent
// as an HttpOnly, SameSite=Strict cookie scoped to /admin. The cookie never
// holds the admin token. Logging out ends the session on the server, and a
// changed admin token ends every session opened with the old one.

// sessionTTL is how long a dashboard session lasts.
const sessionTTL = 12 * time.Hour

// maxSessions bounds the store; the oldest session goes first.
const maxSessions = 1024

type sessionStore struct {
	mu    sync.Mutex
	now   func() time.Time
	byID  map[[32]byte]session
	order [][32]byte
}

type session struct {
	expires time.Time
	// token is a hash of the admin token the session was opened with.
	token [32]byte
}

func newSessionStore(now func() time.Time) *sessionStore {
	return &sessionStore{now: now, byID: map[[32]byte]session{}}
}

// create opens a session for the current token and returns its id.
func (s *sessionStore) create(token string) (string, error) {
	raw := make([]byte, 32)
	if _, err := rand.Read(raw); err != nil {
		return "", err
	}
	id := base64.RawURLEncoding.EncodeToString(raw)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.expire()
	for len(s.order) >= maxSessions {
		delete(s.byID, s.order[0])
		s.order = s.order[1:]
	}
	k := sha256.Sum256([]byte(id))
	s.byID[k] = session{expires: s.now().Add(sessionTTL), token: sha256.Sum256([]byte(token))}
	s.order = append(s.order, k)
	return id, nil
}

// valid reports whether id is a live session opened with token.
func (s *sessionStore) valid(id, token string) bool {
	if id == "" {
		return false
	}
	k := sha256.Sum256([]byte(id))
	s.mu.Lock()
	sess, ok := s.byID[k]
	s.mu.Unlock()
	if !ok || !s.now().Before(sess.expires) {
		return false
	}
	want := sha256.Sum256([]byte(token))
	return subtle.ConstantTimeCompare(sess.token[:], want[:]) == 1
}

// end closes the session id.
func (s *sessionStore) end(id string) {
	k := sha256.Sum256([]byte(id))
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.byID, k)
}

// expire drops sessions past their time; the caller holds mu.
func (s *sessionStore) expire() {
	now := s.now()
	kept := s.order[:0]
	for _, k := range s.order {
		if sess, ok := s.byID[k]; ok && now.Before(sess.expires) {
			kept = append(kept, k)
		} else {
			delete(s.byID, k)
		}
	}
	s.order = kept
}
