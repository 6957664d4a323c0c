// The console's two pages, chosen by the URL's hash (#/chat, #/operator):
// hash routes need nothing from the server beyond index.html.

import "./style.css";
import { chatPage } from "./chat.js";
import { operatorPage, stopOperator } from "./operator.js";

const app = document.getElementById("app") as HTMLElement;

function route(): void {
  const operator = location.hash.startsWith("#/operator");
  document.getElementById("nav-chat")?.classList.toggle("on", !operator);
  document.getElementById("nav-operator")?.classList.toggle("on", operator);
  if (operator) operatorPage(app);
  else {
    stopOperator();
    chatPage(app);
  }
}

window.addEventListener("hashchange", route);
route();
