import { render } from "preact";
import { App } from "./app";
import { boot } from "./session";
import "./styles.css";

render(<App />, document.getElementById("app")!);
void boot();
