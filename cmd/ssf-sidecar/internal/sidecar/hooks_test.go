package sidecar

import (
	"reflect"
	"testing"

	"github.com/ssf-sidecar/ssf-sidecar/outbox"
)

// TestCombineHooksFansOutEveryCallback calls every callback of the combined
// hooks and requires each consumer's to run once, in order, so that a
// callback added to outbox.Hooks cannot be silently dropped here.
func TestCombineHooksFansOutEveryCallback(t *testing.T) {
	var calls []string
	mk := func(who string) outbox.Hooks {
		var h outbox.Hooks
		v := reflect.ValueOf(&h).Elem()
		for i := range v.NumField() {
			name := v.Type().Field(i).Name
			if v.Field(i).Kind() != reflect.Func {
				continue // the tracer, checked below
			}
			fn := reflect.MakeFunc(v.Field(i).Type(), func([]reflect.Value) []reflect.Value {
				calls = append(calls, who+"."+name)
				return nil
			})
			v.Field(i).Set(fn)
		}
		return h
	}
	ta, tb := newDeliveryTracer(nil, nil, false), newDeliveryTracer(nil, nil, false)
	a, b := mk("a"), mk("b")
	a.Trace, b.Trace = ta, tb
	h := combineHooks(a, outbox.Hooks{}, b)
	if h.Trace != tb {
		t.Errorf("Trace is %v, want the last one given", h.Trace)
	}
	v := reflect.ValueOf(h)
	for i := range v.NumField() {
		name, f := v.Type().Field(i).Name, v.Field(i)
		if f.Kind() != reflect.Func {
			continue
		}
		if f.IsNil() {
			t.Errorf("%s is not combined", name)
			continue
		}
		calls = nil
		args := make([]reflect.Value, f.Type().NumIn())
		for j := range args {
			args[j] = reflect.Zero(f.Type().In(j))
		}
		f.Call(args)
		if want := []string{"a." + name, "b." + name}; !reflect.DeepEqual(calls, want) {
			t.Errorf("%s called %v, want %v", name, calls, want)
		}
	}
}
