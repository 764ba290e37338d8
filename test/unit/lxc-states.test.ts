import { describe, expect, it } from 'vitest';
import { parseFancyStates } from '../../src/runtime/lxc.ts';
import { FailedPreconditionError } from '../../src/util/errors.ts';

describe('parseFancyStates (lxc-ls --fancy --fancy-format NAME,STATE)', () => {
  it('reads one state per container, sorted by name, without the header', () => {
    const stdout = 'NAME    STATE   \nweb-2   STOPPED \nweb-10  RUNNING \nalpha   FROZEN  \n';
    expect([...parseFancyStates(stdout)]).toEqual([
      ['alpha', 'FROZEN'],
      ['web-10', 'RUNNING'],
      ['web-2', 'STOPPED'],
    ]);
  });

  it('reads no containers from no output', () => {
    expect(parseFancyStates('').size).toBe(0);
    expect(parseFancyStates('\n').size).toBe(0);
  });

  it('refuses a state it does not know, or a line that is not a name and a state', () => {
    expect(() => parseFancyStates('NAME STATE\nweb BOOTING\n')).toThrow(FailedPreconditionError);
    expect(() => parseFancyStates('NAME STATE\nweb BOOTING\n')).toThrow(/web is in state "BOOTING"/);
    expect(() => parseFancyStates('NAME STATE\nweb\n')).toThrow(/not a container name and a state/);
    expect(() => parseFancyStates('NAME STATE\nweb RUNNING extra\n')).toThrow(/not a container name and a state/);
  });
});
