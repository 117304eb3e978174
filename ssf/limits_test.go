package ssf

import (
	"fmt"
	"net/http"
	"testing"
)

// TestStreamAndSubjectLimits: a receiver may hold MaxStreamsPerReceiver
// streams (409 beyond, another receiver unaffected, room again after a
// delete) and a stream MaxSubjectsPerStream subjects, added and removed
// together (429 beyond; re-adding a listed subject is not a new one).
func TestStreamAndSubjectLimits(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.MaxStreamsPerReceiver, c.MaxSubjectsPerStream = 2, 3 })
	a := h.create(acmeTok, map[string]any{"description": "one"})
	h.create(acmeTok, map[string]any{"description": "two"})
	r := h.do("POST", "/ssf/streams", acmeTok, map[string]any{"description": "three"})
	var e struct{ Err string }
	r.json(t, &e)
	if r.status != http.StatusConflict || e.Err != "too_many_streams" {
		t.Fatalf("third stream: %d %s", r.status, r.body)
	}
	h.create(globexTok, map[string]any{}) // its own allowance
	if r := h.do("DELETE", "/ssf/streams?stream_id="+a.StreamID, acmeTok, nil); r.status != http.StatusNoContent {
		t.Fatalf("delete: %d %s", r.status, r.body)
	}
	b := h.create(acmeTok, map[string]any{"default_subjects": "NONE"})

	subject := func(i int) map[string]any {
		return map[string]any{"stream_id": b.StreamID, "subject": map[string]string{"format": "email", "email": fmt.Sprintf("u%d@example.com", i)}}
	}
	steps := []struct {
		name string
		path string
		i    int
		want int
	}{
		{"add 1", "/ssf/subjects:add", 1, 200},
		{"add 2", "/ssf/subjects:add", 2, 200},
		{"remove 3 (counts too)", "/ssf/subjects:remove", 3, 204},
		{"add 4: over", "/ssf/subjects:add", 4, 429},
		{"add 1 again: not new", "/ssf/subjects:add", 1, 200},
	}
	for _, s := range steps {
		r := h.do("POST", s.path, acmeTok, subject(s.i))
		if r.status/100 != s.want/100 || (s.want == 429 && r.status != 429) {
			t.Errorf("%s: %d %s, want %d", s.name, r.status, r.body, s.want)
		}
		if s.want == 429 {
			r.json(t, &e)
			if e.Err != "too_many_subjects" {
				t.Errorf("%s: err %q", s.name, e.Err)
			}
		}
	}
}
