package outbox

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"time"
)

// Records are stored in a compact binary form: every SET is written twice
// (queued, then delivered) and read once on its way out, and the JSON
// encoder spent more on a record than the rest of its bookkeeping. Records
// written as JSON by earlier versions (they start with '{') are still read.
//
// The form is recordV1 followed by the fields in declaration order:
// strings and byte slices as a uvarint length and the bytes, integers as
// varints, booleans as one byte, times as a presence byte then varint
// seconds and uvarint nanoseconds since the Unix epoch, labels as a count
// and sorted key/value pairs, attempts as a count and their fields.
const recordV1 = 0x01

// errRecordShort is returned for a record that ends inside a field.
var errRecordShort = errors.New("record ends early")

// encodeRecord appends the binary form of r to dst.
func encodeRecord(dst []byte, r *Record) []byte {
	dst = append(dst, recordV1)
	dst = appendString(dst, r.JTI)
	dst = appendString(dst, r.StreamID)
	dst = binary.AppendUvarint(dst, r.Seq)
	dst = appendString(dst, r.EventType)
	dst = binary.AppendUvarint(dst, uint64(len(r.Claims)))
	dst = append(dst, r.Claims...)
	dst = binary.AppendUvarint(dst, uint64(len(r.Labels)))
	for _, k := range slices.Sorted(maps.Keys(r.Labels)) {
		dst = appendString(dst, k)
		dst = appendString(dst, r.Labels[k])
	}
	dst = appendString(dst, r.TraceParent)
	dst = appendBool(dst, r.Announce)
	dst = appendString(dst, string(r.State))
	dst = appendTime(dst, r.EnqueuedAt)
	dst = appendTime(dst, r.QueuedAt)
	dst = appendTime(dst, r.DeliveredAt)
	dst = appendTime(dst, r.DeadAt)
	dst = appendString(dst, r.Reason)
	dst = binary.AppendVarint(dst, int64(r.AttemptCount))
	dst = binary.AppendUvarint(dst, uint64(len(r.Attempts)))
	for _, a := range r.Attempts {
		dst = appendTime(dst, a.Time)
		dst = binary.AppendVarint(dst, int64(a.StatusCode))
		dst = binary.AppendVarint(dst, int64(a.Latency))
		dst = appendString(dst, a.Outcome)
		dst = appendString(dst, a.Error)
	}
	return dst
}

// decodeRecord reads a stored record, binary or (older) JSON. It copies
// everything it keeps, so v may be a bbolt value.
func decodeRecord(v []byte) (*Record, error) {
	if len(v) > 0 && v[0] == '{' {
		var r Record
		if err := json.Unmarshal(v, &r); err != nil {
			return nil, err
		}
		return &r, nil
	}
	if len(v) == 0 || v[0] != recordV1 {
		return nil, errors.New("unknown record format")
	}
	d := recordDecoder{b: v[1:]}
	r := &Record{}
	r.JTI = d.str()
	r.StreamID = d.str()
	r.Seq = d.uvarint()
	r.EventType = d.str()
	if claims := d.bytes(); len(claims) > 0 {
		r.Claims = json.RawMessage(slices.Clone(claims))
	}
	if n := d.count(2); n > 0 {
		r.Labels = make(map[string]string, n)
		for range n {
			k := d.str()
			r.Labels[k] = d.str()
		}
	}
	r.TraceParent = d.str()
	r.Announce = d.bool()
	r.State = State(d.str())
	r.EnqueuedAt = d.time()
	r.QueuedAt = d.time()
	r.DeliveredAt = d.time()
	r.DeadAt = d.time()
	r.Reason = d.str()
	r.AttemptCount = int(d.varint())
	if n := d.count(5); n > 0 {
		r.Attempts = make([]Attempt, n)
		for i := range r.Attempts {
			a := &r.Attempts[i]
			a.Time = d.time()
			a.StatusCode = int(d.varint())
			a.Latency = time.Duration(d.varint())
			a.Outcome = d.str()
			a.Error = d.str()
		}
	}
	if d.err != nil {
		return nil, d.err
	}
	if len(d.b) != 0 {
		return nil, fmt.Errorf("%d bytes after the record", len(d.b))
	}
	return r, nil
}

func appendString(dst []byte, s string) []byte {
	dst = binary.AppendUvarint(dst, uint64(len(s)))
	return append(dst, s...)
}

func appendBool(dst []byte, b bool) []byte {
	if b {
		return append(dst, 1)
	}
	return append(dst, 0)
}

func appendTime(dst []byte, t time.Time) []byte {
	if t.IsZero() {
		return append(dst, 0)
	}
	dst = append(dst, 1)
	dst = binary.AppendVarint(dst, t.Unix())
	return binary.AppendUvarint(dst, uint64(t.Nanosecond()))
}

// recordDecoder reads fields off b; the first failure sticks in err and
// every later read returns a zero value.
type recordDecoder struct {
	b   []byte
	err error
}

func (d *recordDecoder) fail(err error) {
	if d.err == nil {
		d.err = err
	}
	d.b = nil
}

func (d *recordDecoder) uvarint() uint64 {
	v, n := binary.Uvarint(d.b)
	if n <= 0 {
		d.fail(errRecordShort)
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *recordDecoder) varint() int64 {
	v, n := binary.Varint(d.b)
	if n <= 0 {
		d.fail(errRecordShort)
		return 0
	}
	d.b = d.b[n:]
	return v
}

// bytes returns the next length-prefixed field, aliasing the input.
func (d *recordDecoder) bytes() []byte {
	n := d.uvarint()
	if d.err != nil {
		return nil
	}
	if n > uint64(len(d.b)) {
		d.fail(errRecordShort)
		return nil
	}
	v := d.b[:n:n]
	d.b = d.b[n:]
	return v
}

func (d *recordDecoder) str() string { return string(d.bytes()) }

// count reads an element count, refusing one that the rest of the record
// cannot hold (each element takes at least each bytes).
func (d *recordDecoder) count(each int) int {
	n := d.uvarint()
	if d.err != nil {
		return 0
	}
	if n > uint64(len(d.b)/each) {
		d.fail(fmt.Errorf("count %d larger than the record", n))
		return 0
	}
	return int(n)
}

func (d *recordDecoder) bool() bool {
	if len(d.b) == 0 {
		d.fail(errRecordShort)
		return false
	}
	v := d.b[0]
	d.b = d.b[1:]
	if v > 1 {
		d.fail(fmt.Errorf("bad boolean %d", v))
	}
	return v == 1
}

func (d *recordDecoder) time() time.Time {
	if len(d.b) == 0 {
		d.fail(errRecordShort)
		return time.Time{}
	}
	set := d.b[0]
	d.b = d.b[1:]
	switch set {
	case 0:
		return time.Time{}
	case 1:
	default:
		d.fail(fmt.Errorf("bad time marker %d", set))
		return time.Time{}
	}
	sec := d.varint()
	nsec := d.uvarint()
	if d.err != nil {
		return time.Time{}
	}
	if nsec >= uint64(time.Second) {
		d.fail(fmt.Errorf("bad nanoseconds %d", nsec))
		return time.Time{}
	}
	return time.Unix(sec, int64(nsec)).UTC()
}

// compactJSON returns c without insignificant whitespace (c itself when it
// has none), so that what is stored and signed is the compact form.
func compactJSON(c json.RawMessage) json.RawMessage {
	var b bytes.Buffer
	b.Grow(len(c))
	if json.Compact(&b, c) != nil || b.Len() == len(c) {
		return c
	}
	return b.Bytes()
}
