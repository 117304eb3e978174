package main

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
			fn := reflect.MakeFunc(v.Field(i).Type(), func([]reflect.Value) []reflect.Value {
				calls = append(calls, who+"."+name)
				return nil
			})
			v.Field(i).Set(fn)
		}
		return h
	}
	h := combineHooks(mk("a"), outbox.Hooks{}, mk("b"))
	v := reflect.ValueOf(h)
	for i := range v.NumField() {
		name, f := v.Type().Field(i).Name, v.Field(i)
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
