/** The made-up organisations of the `warren dev` demo page. Nothing here is used outside dev mode. */

export interface DemoTeam {
  id: string;
  name: string;
}

export interface DemoUser {
  id: string;
  name: string;
  teams: readonly string[];
}

export interface DemoTenant {
  id: string;
  name: string;
  teams: readonly DemoTeam[];
  users: readonly DemoUser[];
}

export const DEMO_DIRECTORY: readonly DemoTenant[] = [
  {
    id: 'acme-health',
    name: 'Acme Health',
    teams: [
      { id: 'icu', name: 'ICU' },
      { id: 'radiology', name: 'Radiology' },
      { id: 'pharmacy', name: 'Pharmacy' },
    ],
    users: [
      { id: 'alice', name: 'Alice Nguyen', teams: ['icu'] },
      { id: 'bob', name: 'Bob Martin', teams: ['icu', 'pharmacy'] },
      { id: 'carol', name: 'Carol Diaz', teams: ['radiology'] },
      { id: 'dave', name: 'Dave Okafor', teams: ['radiology', 'pharmacy'] },
    ],
  },
  {
    id: 'globex-clinic',
    name: 'Globex Clinic',
    teams: [
      { id: 'emergency', name: 'Emergency' },
      { id: 'lab', name: 'Lab' },
    ],
    users: [
      { id: 'erin', name: 'Erin Walsh', teams: ['emergency'] },
      { id: 'frank', name: 'Frank Ito', teams: ['emergency', 'lab'] },
      { id: 'grace', name: 'Grace Kim', teams: ['lab'] },
    ],
  },
];

export function findTenant(tenantId: unknown): DemoTenant | undefined {
  return DEMO_DIRECTORY.find((t) => t.id === tenantId);
}

export function findUser(tenant: DemoTenant, userId: unknown): DemoUser | undefined {
  return tenant.users.find((u) => u.id === userId);
}

/** What seeding needs of the publisher SDK. */
export interface MembershipWriter {
  addUserToTeam(tenantId: string, userId: string, teamId: string): Promise<boolean>;
}

/** Gives the demo teams their members (idempotent: adding a member twice changes nothing). */
export async function seedDemoMemberships(writer: MembershipWriter): Promise<number> {
  let applied = 0;
  for (const tenant of DEMO_DIRECTORY) {
    for (const user of tenant.users) {
      for (const teamId of user.teams) {
        await writer.addUserToTeam(tenant.id, user.id, teamId);
        applied += 1;
      }
    }
  }
  return applied;
}
